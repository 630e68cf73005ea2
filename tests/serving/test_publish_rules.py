"""serving.publish_rules: mined rules become a NEW bundle version (parent unchanged, LATEST moved); rules whose
item ids the bundle does not have are refused."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from features.artifacts import write_json
from serving.bundle import BundleError, latest_name, load_bundle, read_manifest
from serving.publish_rules import publish_rules


@pytest.fixture()
def root(bundles_root, tmp_path):
    r = tmp_path / "bundles"
    shutil.copytree(bundles_root / "bundles" / "b1", r / "b1")
    (r / "LATEST").write_text("b1\n")
    return r


def write_rules(folder, item_ids, others):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": np.asarray(item_ids, np.int64), "other_item_id": np.asarray(others, np.int64),
                  "support": 0.01, "confidence": np.linspace(0.9, 0.1, len(item_ids)), "lift": 2.0}).to_parquet(
        folder / "bought_together.parquet", index=False)
    write_json(folder / "manifest.json", {"data": "toy", "source": "temporal_train", "n_rules": len(item_ids),
                                          "n_baskets": 10})
    return folder


def test_rules_publish_a_new_version(root, tmp_path):
    before = (root / "b1" / "bought_together.parquet").read_bytes()
    rules = write_rules(tmp_path / "assoc", [0, 0, 1], [1, 2, 0])
    new = publish_rules(rules, root / "b1")
    assert new.name == "b1.1" and latest_name(root) == "b1.1"
    assert (root / "b1" / "bought_together.parquet").read_bytes() == before  # the parent never changes
    m = read_manifest(new)
    assert m["parent"] == "b1" and m["adds"] == ["bought_together.parquet"] and m["bought_together"]["n_rules"] == 3
    b = load_bundle(new)  # the hashes hold
    assert b.bought_together[0][0].tolist() == [1, 2] and set(b.bought_together) == {0, 1}


def test_rules_from_other_data_are_refused(root, tmp_path):
    rules = write_rules(tmp_path / "assoc", [0, 10_000], [1, 2])
    with pytest.raises(BundleError, match="item id 10000 outside the bundle's catalogue"):
        publish_rules(rules, root / "b1")
    with pytest.raises(BundleError, match="mine the rules first"):
        publish_rules(tmp_path / "nothing", root / "b1")
    assert latest_name(root) == "b1" and sorted(p.name for p in root.iterdir()) == ["LATEST", "b1"]
