"""New items end to end: added to the catalogue, embedded from their content by ``python -m training.cold_items``
(a derived bundle version), then recommended and served as similar without retraining the sequence model."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from features.privacy import pseudonymise_one
from serving.bundle import latest_name, load_bundle, read_manifest
from serving.recommender import RecommendSettings, Recommender, RecQuery
from serving.store import EventStore
from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle, raw_user_id

GENEROUS = {"retrieve": 5000.0, "rank": 5000.0, "rules": 5000.0}


@pytest.fixture(scope="module")
def derived(tmp_path_factory, repo_root):
    art = tmp_path_factory.mktemp("cold_art")
    root = art / "bundles"
    parent = build_synthetic_bundle(root / "syn", SyntheticBundleSpec(n_items=300, n_users=60, seed=1))
    items = pd.DataFrame({"item_key": ["NEW-1", "NEW-2"], "category": ["cat03", "cat07"], "price": [9.5, 20.0]})
    new_file = art / "new_items.csv"
    items.to_csv(new_file, index=False)
    env = {**os.environ, "SHOPREC_ARTIFACTS": str(art)}
    res = subprocess.run([sys.executable, "-m", "training.cold_items", f"bundle={parent}", f"+items={new_file}",
                          f"paths.artifacts={art}"], cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return parent, root / latest_name(root)


def test_a_derived_version_holds_the_new_items(derived):
    parent, child = derived
    assert child != parent and read_manifest(child)["parent"] == parent.name
    m = read_manifest(child)
    assert m["n_items"] == read_manifest(parent)["n_items"] + 2
    assert m["content_items"]["new_item_keys"] == ["NEW-1", "NEW-2"]
    assert np.load(child / "item_embeddings.npy").shape[0] == m["n_items"]
    assert (parent / "items.parquet").exists() and read_manifest(parent)["n_items"] == 300   # parent unchanged


def test_new_items_are_served_as_similar_and_recommended(derived, tmp_path):
    _, child = derived
    b = load_bundle(child)
    rec = Recommender(b, EventStore(tmp_path / "events.csv"), RecommendSettings(budget_ms=GENEROUS))
    new_id = b.items.key_to_id["NEW-1"]
    sim = rec.similar("NEW-1", 10)                      # the new item's neighbours: its own category
    assert sim and all(b.items.category[b.items.key_to_id[i.item_key]] == "cat03" for i in sim)
    anchor = next(i for i in range(b.n_items) if b.items.category[i] == "cat03" and i != new_id)
    assert "NEW-1" in [i.item_key for i in rec.similar(b.items.keys[anchor], 40)]
    # a user whose history is in cat03 gets the new item among their cat03 recommendations
    user = next(u for u in range(60) if b.items.category[b.users[pseudonymise_one(raw_user_id(u))].history[0]] == "cat03")
    key = pseudonymise_one(raw_user_id(user))
    res = rec.recommend(RecQuery(key, 40, category="cat03"))
    assert res.degraded is None and "NEW-1" in [i.item_key for i in res.items]
    # a history that holds the new item is encoded too (the encoder's item table grew): no fallback
    res = rec.recommend(RecQuery(key, 5, recent_items=("NEW-1",)))
    assert res.degraded is None and not res.cold_start


def test_a_key_already_in_the_catalogue_is_refused(derived, tmp_path, repo_root):
    _, child = derived
    bad = tmp_path / "dup.csv"
    pd.DataFrame({"item_key": ["NEW-1"], "category": ["cat01"]}).to_csv(bad, index=False)
    res = subprocess.run([sys.executable, "-m", "training.cold_items", f"bundle={child}", f"+items={bad}",
                          f"paths.artifacts={child.parent.parent}"], cwd=repo_root, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "NEW-1" in res.stderr and "already" in res.stderr
