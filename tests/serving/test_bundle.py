"""serving.bundle: LATEST resolution, validation errors that name the file, the loaded object."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from serving.bundle import BundleError, load_bundle, resolve_bundle_dir


def test_latest_is_resolved_and_loaded(bundles_root):
    d = resolve_bundle_dir(None, bundles_root / "bundles")
    assert d.name == "b1"
    b = load_bundle(d)
    assert (b.n_items, b.dim, b.max_len) == (500, 32, 20)
    assert b.item_embeddings.shape == (500, 32) and b.items.n == 500
    assert len(b.users) == 200 and b.index.n_items == 500
    assert b.items.available[b.items.popular_order].all() and len(b.items.popular_order) == b.items.available.sum()
    emb = b.encode([np.array([3, 4]), np.array([], np.int64)])
    assert emb.shape == (2, 32) and np.isfinite(emb).all()


def test_missing_latest_and_bad_names(tmp_path):
    with pytest.raises(BundleError, match="LATEST: not found"):
        resolve_bundle_dir(None, tmp_path)
    (tmp_path / "LATEST").write_text("../etc\n")
    with pytest.raises(BundleError, match="expected a bundle folder name"):
        resolve_bundle_dir(None, tmp_path)
    (tmp_path / "LATEST").write_text("gone\n")
    with pytest.raises(BundleError, match="is not a folder"):
        resolve_bundle_dir(None, tmp_path)
    with pytest.raises(BundleError, match="folder not found"):
        resolve_bundle_dir(tmp_path / "nope", tmp_path)


@pytest.fixture()
def copy(bundles_root, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles_root / "bundles" / "b1", d)
    return d


def test_corrupt_file_fails_hash_check(copy):
    emb = np.load(copy / "item_embeddings.npy")
    emb[0, 0] += 1
    np.save(copy / "item_embeddings.npy", emb)
    with pytest.raises(BundleError, match=r"item_embeddings.npy: sha256 differs"):
        load_bundle(copy)
    load_bundle(copy, verify_hashes=False)  # same shape: loads when hashes are not checked


def test_manifest_problems_name_the_field(copy):
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**m, "schema_version": 9}))
    with pytest.raises(BundleError, match="schema_version=9"):
        load_bundle(copy)
    (copy / "manifest.json").write_text(json.dumps({**m, "n_items": 7}))
    with pytest.raises(BundleError, match=r"shape \(500, 32\), manifest.json says \(7, 32\)"):
        load_bundle(copy)
    del m["dim"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="field 'dim' is missing"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{oops")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        load_bundle(copy)


def test_missing_encoder_is_named(copy):
    (copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="encoder.onnx: missing"):
        load_bundle(copy, verify_hashes=False)


def test_bought_together_keeps_the_best_per_item(tmp_path):
    import numpy as np
    import pandas as pd

    from serving.bundle import load_bought_together

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"item_id": rng.integers(0, 30, 400), "other_item_id": rng.integers(0, 30, 400),
                       "confidence": rng.random(400)})
    df.loc[0, "item_id"] = 99  # out of range: dropped
    df.to_parquet(tmp_path / "bt.parquet")
    got = load_bought_together(tmp_path / "bt.parquet", n_items=30, per_item=4)
    ref = df[df["item_id"] < 30].sort_values(["item_id", "confidence"], ascending=[True, False])
    ref = ref.groupby("item_id").head(4)
    assert sorted(got) == sorted(ref["item_id"].unique().tolist())
    for item, g in ref.groupby("item_id"):
        others, conf = got[int(item)]
        assert others.tolist() == g["other_item_id"].tolist()
        assert np.allclose(conf, g["confidence"].to_numpy(np.float32))


# --- the contract: versions, LATEST, derived versions, sequence encoding, key fingerprint ---------------------------

def test_derived_version_adds_files_records_parent_and_leaves_the_parent_alone(bundles_root, tmp_path):
    from serving.bundle import latest_name, load_version, publish_derived, read_manifest, resolve

    root = tmp_path / "bundles"
    shutil.copytree(bundles_root / "bundles" / "b1", root / "b1")
    (root / "LATEST").write_text("b1\n")
    before = {p.name: p.read_bytes() for p in (root / "b1").iterdir() if p.is_file()}
    extra = tmp_path / "note.txt"
    extra.write_text("hello")
    new = publish_derived(root / "b1", add_files={"extra/note.txt": extra}, manifest_updates={"note": 1})
    assert new == root / "b1.1" and latest_name(root) == "b1.1" and resolve(root) == new
    assert {p.name: p.read_bytes() for p in (root / "b1").iterdir() if p.is_file()} == before  # parent unchanged
    m = read_manifest(new)
    assert m["parent"] == "b1" and m["adds"] == ["extra/note.txt"] and m["note"] == 1 and m["name"] == "b1.1"
    assert "extra/note.txt" in m["files"] and "items.parquet" in m["files"]
    second = publish_derived(new, add_files={"extra/note.txt": extra}, latest=False)
    assert second.name == "b1.2" and latest_name(root) == "b1.1"  # numbered per base; LATEST only when asked
    a, b = load_version(root, "b1"), load_version(root, "LATEST")  # two versions side by side, by name
    assert a.name == "b1" and b.name == "b1.1" and a is not b
    (new / "extra" / "note.txt").write_text("changed")  # a version name pins its content
    with pytest.raises(BundleError, match=r"extra/note.txt: sha256 differs"):
        load_version(root, "b1.1")
    (root / "b1" / "ranker.onnx.new").write_bytes(b"x")  # a file dropped into a published version
    with pytest.raises(BundleError, match=r"ranker.onnx.new: not listed in manifest.json files"):
        load_version(root, "b1")


def test_derived_version_of_a_corrupt_parent_is_refused(copy):
    from serving.bundle import publish_derived

    emb = np.load(copy / "item_embeddings.npy")
    np.save(copy / "item_embeddings.npy", emb + 1)
    with pytest.raises(BundleError, match="item_embeddings.npy: sha256 differs"):
        publish_derived(copy, add_files={})
    assert sorted(p.name for p in copy.parent.iterdir() if p.name.startswith("b.")) == []  # nothing left behind


def test_new_version_is_atomic_and_never_replaces(tmp_path):
    from serving.bundle import latest_name, new_version, read_manifest

    root = tmp_path / "bundles"
    with pytest.raises(RuntimeError, match="boom"):
        with new_version(root, "v1", manifest={"dim": 2}) as draft:
            (draft.path / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert list(root.iterdir()) == [] and latest_name(root) is None  # nothing published, no temp folder left
    with new_version(root, "v1", manifest={"dim": 2}) as draft:
        (draft.path / "a.txt").write_text("a")
    m = read_manifest(root / "v1", validate=False)
    assert latest_name(root) == "v1" and m["parent"] is None and list(m["files"]) == ["a.txt"]
    assert m["schema_version"] == 1 and len(m["pseudo_key_fingerprint"]) == 16
    with pytest.raises(BundleError, match="exists already"):
        with new_version(root, "v1"):
            pass


def test_resolve_by_name_and_bad_names(tmp_path):
    from serving.bundle import resolve, set_latest

    (tmp_path / "v1").mkdir()
    assert resolve(tmp_path, "v1") == tmp_path / "v1"
    for bad in ("../v1", ".hidden", "a/b"):
        with pytest.raises(BundleError, match="expected a bundle folder name"):
            resolve(tmp_path, bad)
    with pytest.raises(BundleError, match="is not a folder"):
        resolve(tmp_path, "v2")
    with pytest.raises(BundleError, match="LATEST can only name a complete bundle"):
        set_latest(tmp_path, "v1")  # no manifest.json yet


def test_sequences_are_left_padded_item_id_plus_one():
    from serving.bundle import encode_sequences

    got = encode_sequences([np.array([5, 6, 7]), [], list(range(10))], max_len=4)
    assert got.dtype == np.int64 and got.tolist() == [[0, 6, 7, 8], [0, 0, 0, 0], [7, 8, 9, 10]]


def test_bundle_made_with_another_pseudonymisation_key_is_refused(copy, monkeypatch):
    m = json.loads((copy / "manifest.json").read_text())
    assert m.get("pseudo_key_fingerprint")  # the synthetic bundle records the key it was made with
    monkeypatch.setenv("SHOPREC_PSEUDO_KEY", "another-key")
    with pytest.raises(BundleError, match="key of fingerprint"):
        load_bundle(copy)
    load_bundle(copy, check_key=False)


def test_writer_replaces_files_without_touching_the_parent(bundles_root, tmp_path, monkeypatch):
    """The parent's files are hard links in the derived version: a writer replacing one must not change the
    parent's bytes; a process with another pseudonymisation key may not derive (added files hold pseudonyms)."""
    from serving.bundle import publish_derived, read_manifest

    root = tmp_path / "bundles"
    shutil.copytree(bundles_root / "bundles" / "b1", root / "b1")
    before = (root / "b1" / "users.parquet").read_bytes()
    new = publish_derived(root / "b1", write=lambda d: (d / "users.parquet").write_bytes(b"replaced"), verify=True)
    assert (new / "users.parquet").read_bytes() == b"replaced"
    assert (root / "b1" / "users.parquet").read_bytes() == before
    m = read_manifest(new)
    assert m["adds"] == ["users.parquet"] and m["files"]["items.parquet"] == read_manifest(root / "b1")["files"]["items.parquet"]
    assert m["pseudo_key_fingerprint"] == read_manifest(root / "b1")["pseudo_key_fingerprint"]
    monkeypatch.setenv("SHOPREC_PSEUDO_KEY", "another-key")
    with pytest.raises(BundleError, match="key of fingerprint"):
        publish_derived(root / "b1")


def test_a_version_name_is_looked_up_under_the_bundles_root(tmp_path, monkeypatch):
    (tmp_path / "root" / "v1").mkdir(parents=True)
    (tmp_path / "v1").mkdir()  # a folder of the same name where the process runs
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle_dir("v1", tmp_path / "root") == tmp_path / "root" / "v1"
    assert resolve_bundle_dir(str(tmp_path / "v1"), tmp_path / "root") == tmp_path / "v1"
