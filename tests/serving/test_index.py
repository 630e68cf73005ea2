"""CandidateIndex backends: exact results, filters, padding, save/load, bad bundles and bad configs."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from serving.bundle import BundleError
from serving.index import (
    FaissIndex, IndexConfigError, IndexSettings, TorchExactIndex, build_index, load_index,
    recall_at_k, save_index, IndexManifest,
)
from tests.toy_bundle import make_bundle, toy_embeddings

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)


def settings(**kw) -> IndexSettings:
    base = dict(name="t", backend="faiss", factory="Flat", search_params={}, filter="overfetch", overfetch=4)
    base.update(kw)
    return IndexSettings(**base)


@pytest.fixture(scope="module")
def emb():
    return toy_embeddings(2000, 16, seed=3)[0]


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(7).normal(size=(8, 16)).astype(np.float32)


def brute(emb, q, k, exclude=None, allowed=None):
    s = q @ emb.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    if exclude is not None:
        for j, ex in enumerate(exclude):
            s[j, list(ex)] = -np.inf
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


@pytest.mark.parametrize("kind", ["torch", "flat", "ivf", "hnsw"])
def test_search_matches_bruteforce_best_first(kind, emb, queries):
    idx = {
        "torch": lambda: TorchExactIndex(emb),
        "flat": lambda: build_index(emb, settings()),
        "ivf": lambda: build_index(emb, settings(factory="IVF16,Flat", search_params={"nprobe": 16})),
        "hnsw": lambda: build_index(emb, settings(factory="HNSW32,Flat", search_params={"efSearch": 200})),
    }[kind]()
    s, ids = idx.search(queries, 20)
    assert s.dtype == np.float32 and ids.dtype == np.int64 and s.shape == ids.shape == (8, 20)
    assert np.all(np.diff(s, axis=1) <= 1e-6), "scores must be best first"
    ref_s, ref_ids = brute(emb, queries, 20)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, ref_ids)])
    assert overlap >= (1.0 if kind in ("torch", "flat", "ivf") else 0.95)
    np.testing.assert_allclose(s[:, 0], ref_s[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("factory,params,filt", [
    ("Flat", {}, "overfetch"), ("Flat", {}, "selector"),
    ("IVF16,Flat", {"nprobe": 16}, "overfetch"), ("IVF16,Flat", {"nprobe": 16}, "selector"),
    # the 1M setting's form: fast-scan PQ codes re-ranked on the float vectors (selector on the base index)
    ("IVF16,PQ16x4fs,RFlat", {"nprobe": 16, "k_factor_rf": 50}, "overfetch"),
    ("IVF16,PQ16x4fs,RFlat", {"nprobe": 16, "k_factor_rf": 50}, "selector"),
    ("IVF16_HNSW32,Flat", {"nprobe": 16, "quantizer_efSearch": 32}, "selector"),
])
def test_filters_exclude_and_allowed(factory, params, filt, emb, queries):
    idx = build_index(emb, settings(factory=factory, search_params=params, filter=filt))
    allowed = np.zeros(len(emb), bool)
    allowed[::5] = True
    _, top = brute(emb, queries, 10, allowed=allowed)
    exclude = [set(top[j, :3].tolist()) | {1, 2, 3} for j in range(len(queries))]
    s, ids = idx.search(queries, 10, exclude=exclude, allowed=allowed)
    ref_s, ref_ids = brute(emb, queries, 10, exclude=exclude, allowed=allowed)
    for j in range(len(queries)):
        assert not set(ids[j].tolist()) & exclude[j]
        assert allowed[ids[j]].all()
    np.testing.assert_array_equal(ids, ref_ids)
    torch_ids = TorchExactIndex(emb).search(queries, 10, exclude=exclude, allowed=allowed)[1]
    np.testing.assert_array_equal(torch_ids, ref_ids)


@pytest.mark.parametrize("make", [lambda e: TorchExactIndex(e), lambda e: build_index(e, settings()),
                                  lambda e: build_index(e, settings(filter="selector"))])
def test_pads_when_fewer_items_qualify(make, emb, queries):
    idx = make(emb)
    allowed = np.zeros(len(emb), bool)
    allowed[[4, 9, 11]] = True
    s, ids = idx.search(queries[:2], 5, exclude=[{9}, set()], allowed=allowed)
    assert sorted(ids[0, :2].tolist()) == [4, 11] and (ids[0, 2:] == -1).all()
    assert np.isneginf(s[0, 2:]).all() and np.isfinite(s[0, :2]).all()
    assert sorted(ids[1, :3].tolist()) == [4, 9, 11] and (ids[1, 3:] == -1).all()
    s, ids = idx.search(queries[:1], 3000)  # k larger than the catalogue
    assert (ids[0, :2000] >= 0).all() and (ids[0, 2000:] == -1).all()


def test_overfetch_falls_back_when_filter_leaves_too_few(emb, queries):
    idx = build_index(emb, settings(overfetch=1))
    _, top = brute(emb, queries, 200)
    exclude = [set(top[j, :150].tolist()) for j in range(len(queries))]  # more than k*overfetch
    _, ids = idx.search(queries, 10, exclude=exclude)
    np.testing.assert_array_equal(ids, brute(emb, queries, 10, exclude=exclude)[1])


def test_bad_arguments(emb, queries):
    idx = TorchExactIndex(emb)
    with pytest.raises(ValueError, match="queries"):
        idx.search(queries[:, :3], 5)
    with pytest.raises(ValueError, match="allowed"):
        idx.search(queries, 5, allowed=np.ones(3, bool))
    with pytest.raises(ValueError, match="exclude"):
        idx.search(queries, 5, exclude=[set()])


def test_config_that_does_not_fit_fails_before_building(emb):
    with pytest.raises(IndexConfigError, match="nlist=4096 is larger than the catalogue"):
        build_index(emb, settings(factory="IVF4096,Flat"))
    with pytest.raises(IndexConfigError, match="index.dim=32"):
        build_index(emb, settings(dim=32))
    with pytest.raises(IndexConfigError, match="PQ sub-quantizers 5"):
        build_index(emb, settings(factory="IVF16,PQ5"))
    with pytest.raises(IndexConfigError, match="index.backend"):
        IndexSettings.from_cfg({"name": "x", "backend": "annoy"})
    with pytest.raises(IndexConfigError, match="nprobe"):
        build_index(emb, settings(factory="IVF16,Flat", search_params={"nprobe": 64}))


@pytest.mark.parametrize("factory,params,match", [
    # IVF with an HNSW coarse quantiser, and with a refine stage: same nlist / nprobe / PQ checks
    ("IVF4096_HNSW32,Flat", {}, r"index.factory='IVF4096_HNSW32,Flat': nlist=4096 is larger than the catalogue"),
    ("IVF16_HNSW32,Flat", {"nprobe": 64}, r"index.search_params.nprobe=64 is larger than nlist=16"),
    ("IVF4096,PQ16x4fs,RFlat", {}, r"nlist=4096 is larger than the catalogue \(2000 items\)"),
    ("IVF16,PQ5x4fs,RFlat", {}, r"index.factory='IVF16,PQ5x4fs,RFlat': PQ sub-quantizers 5 do not divide the dimension 16"),
    # parameters the index does not have, or malformed ones, fail before training
    ("IVF16,Flat", {"k_factor_rf": 4}, r"index.search_params.k_factor_rf=4: not a parameter of index.factory='IVF16,Flat'"),
    ("IVF16,Flat", {"quantizer_efSearch": 64}, r"index.search_params.quantizer_efSearch=64: not a parameter"),
    ("IVF16,PQ16x4fs,RFlat", {"k_factor_rf": 0}, r"index.search_params.k_factor_rf=0: expected a number >= 1"),
    ("IVF16,Fancy", {}, r"index.factory='IVF16,Fancy': not a valid FAISS factory string for dimension 16"),
])
def test_new_factory_forms_fail_before_building(monkeypatch, emb, factory, params, match):
    def no_build(*a, **k):  # a check that only fires after training/adding would reach this
        raise AssertionError("index_factory was called for building although the config does not fit")

    monkeypatch.setattr(FaissIndex, "build", classmethod(lambda cls, *a, **k: no_build()))
    with pytest.raises(IndexConfigError, match=match):
        build_index(emb, settings(factory=factory, search_params=params, train_size=None))


def test_dim_mismatch_names_the_setting_for_new_forms(emb):
    for factory in ("IVF16_HNSW32,Flat", "IVF16,PQ16x4fs,RFlat"):
        with pytest.raises(IndexConfigError, match="index.dim=64 does not match the bundle's embedding dimension 16"):
            build_index(emb, settings(factory=factory, dim=64))


def test_refine_index_recall_and_params(emb, queries):
    idx = build_index(emb, settings(factory="IVF16,PQ16x4fs,RFlat", search_params={"nprobe": 16, "k_factor_rf": 8}))
    refine = faiss.downcast_index(idx.index)
    assert refine.k_factor == 8 and faiss.downcast_index(refine.base_index).nprobe == 16
    _, ids = idx.search(queries, 20)
    ref_ids = brute(emb, queries, 20)[1]
    assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, ref_ids)]) >= 0.9


def test_save_and_load_roundtrip(tmp_path, emb, queries):
    bundle = make_bundle(tmp_path / "b", n_items=300, dim=16, encoder=False)
    e = np.load(bundle / "item_embeddings.npy")
    assert isinstance(load_index(bundle), TorchExactIndex)  # no index/ yet: exact over the embeddings
    s = settings(factory="HNSW32,Flat", search_params={"efSearch": 128})
    idx = build_index(e, s)
    man = IndexManifest(name="t", backend="faiss", factory=s.factory, metric="inner_product", n_items=300, dim=16,
                        search_params=s.search_params, filter="overfetch", overfetch=4, device="cpu",
                        build_seconds=0.0, recall_at_k=1.0, recall_k=100, recall_queries=10,
                        recall_query_source="test", torch_dtype="auto", code_version="x")
    save_index(idx, bundle / "index", man)
    loaded = load_index(bundle)
    assert isinstance(loaded, FaissIndex) and loaded.n_items == 300 and loaded.dim == 16
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], idx.search(queries, 10)[1])
    assert recall_at_k(loaded, TorchExactIndex(e), queries, 50) > 0.9


def test_empty_or_corrupt_bundle_names_the_file(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="item_embeddings.npy: missing"):
        load_index(tmp_path / "empty")
    bad = make_bundle(tmp_path / "bad", n_items=50, dim=8, encoder=False)
    (bad / "item_embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="item_embeddings.npy: cannot be read"):
        load_index(bad)
    np.save(bad / "item_embeddings.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(BundleError, match="item_embeddings.npy: expected a non-empty"):
        load_index(bad)
    np.save(bad / "item_embeddings.npy", np.zeros((50, 9), np.float32))
    with pytest.raises(BundleError, match="manifest.json dim=8"):
        load_index(bad)
    np.save(bad / "item_embeddings.npy", np.zeros((50, 8), np.float32))
    (bad / "index").mkdir()
    (bad / "index" / "manifest.json").write_text(json.dumps({"backend": "faiss", "factory": "Flat"}))
    np.save(bad / "index" / "ids.npy", np.arange(50))
    (bad / "index" / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(BundleError, match="index.faiss: cannot be read"):
        load_index(bad)


def test_index_type_without_a_faiss_gpu_version_stays_on_the_cpu(monkeypatch, emb, queries):
    """Where FAISS has a GPU but no GPU version of the index type (fast-scan PQ, refine), the build and the
    load keep the CPU index instead of failing."""
    import serving.index.gpu as gpu_mod

    def no_gpu_clone(index):
        raise RuntimeError("Error in clone_Index: not implemented for this type of index")

    monkeypatch.setattr(gpu_mod, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_gpu_clone)
    idx = build_index(emb, settings(factory="IVF16,PQ16x4fs,RFlat", search_params={"nprobe": 16, "k_factor_rf": 8}))
    assert idx.device.startswith("cpu") and "no FAISS GPU" in idx.device
    assert idx.search(queries, 5)[1].shape == (8, 5)
