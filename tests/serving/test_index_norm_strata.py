"""Norm-ranged index (``index.norm_strata``): parts split by embedding norm, merged results equal exact
search when every part is exact, filters, padding, save/load and config errors naming the stratum."""
from __future__ import annotations


import faiss
import numpy as np
import pytest

from serving.bundle import BundleError
from serving.index import (
    IndexConfigError, IndexManifest, IndexSettings, NormRangedIndex, build_index, load_index,
    save_index,
)
from tests.toy_bundle import make_bundle
from tests.serving.test_index import brute as exact_brute

faiss.omp_set_num_threads(1)


def settings(**kw) -> IndexSettings:
    base = dict(name="t", backend="faiss", factory="Flat", search_params={}, filter="overfetch", overfetch=4,
                norm_strata=[{"share": 0.1, "factory": "Flat", "search_params": {}}])
    base.update(kw)
    return IndexSettings.from_cfg(base)


@pytest.fixture(scope="module")
def emb():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    return x * rng.lognormal(0.0, 0.5, size=(1500, 1)).astype(np.float32)  # norms vary, as in trained models


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(9).normal(size=(6, 16)).astype(np.float32)


def brute(emb, q, k, exclude=None, allowed=None):
    return exact_brute(emb, q, k, exclude=exclude, allowed=allowed)[1]


def test_parts_split_the_catalogue_by_norm(emb):
    idx = build_index(emb, settings(norm_strata=[{"share": 0.05, "factory": "Flat"}, {"share": 0.2, "factory": "Flat"}]))
    assert isinstance(idx, NormRangedIndex) and [len(r) for r in idx.part_rows] == [75, 300, 1125]
    rows = np.concatenate(idx.part_rows)
    assert sorted(rows.tolist()) == list(range(len(emb)))  # every item in exactly one part
    norms = np.linalg.norm(emb, axis=1)
    for hi, lo in zip(idx.part_rows[:-1], idx.part_rows[1:]):
        assert norms[hi].min() >= norms[lo].max()  # highest norms first


@pytest.mark.parametrize("filt", ["overfetch", "selector"])
def test_exact_parts_give_exact_results_with_filters(filt, emb, queries):
    idx = build_index(emb, settings(filter=filt))
    s, ids = idx.search(queries, 20)
    np.testing.assert_array_equal(ids, brute(emb, queries, 20))
    assert np.all(np.diff(s, axis=1) <= 1e-6)
    allowed = np.zeros(len(emb), bool)
    allowed[::3] = True
    top = brute(emb, queries, 5, allowed=allowed)
    exclude = [set(top[j, :3].tolist()) | {0, 3} for j in range(len(queries))]
    _, ids = idx.search(queries, 10, exclude=exclude, allowed=allowed)
    np.testing.assert_array_equal(ids, brute(emb, queries, 10, exclude=exclude, allowed=allowed))


@pytest.mark.parametrize("filt", ["overfetch", "selector"])
def test_item_ids_and_padding(filt, emb, queries):
    ids = np.arange(len(emb)) * 7 + 1000  # item ids that are not row numbers
    idx = NormRangedIndex.build(emb, settings(filter=filt), ids=ids)
    _, got = idx.search(queries, 10)
    np.testing.assert_array_equal(got, ids[brute(emb, queries, 10)])
    allowed = np.zeros(len(emb), bool)
    allowed[[2, 40, 41]] = True
    _, got = idx.search(queries[:1], 5, exclude=[{ids[40]}], allowed=allowed)
    assert sorted(got[0, :2].tolist()) == sorted(ids[[2, 41]].tolist()) and (got[0, 2:] == -1).all()
    exclude = [set(ids[brute(emb, queries[j:j + 1], 3)[0]].tolist()) for j in range(len(queries))]
    allowed = np.zeros(len(emb), bool)
    allowed[::2] = True
    _, got = idx.search(queries, 10, exclude=exclude, allowed=allowed)
    np.testing.assert_array_equal(got, ids[brute(emb, queries, 10, exclude=[{(i - 1000) // 7 for i in e} for e in exclude],
                                                allowed=allowed)])
    exclude[0] = set()                              # a query with nothing to exclude, beside one with
    _, got = idx.search(queries[:2], 10, exclude=exclude[:2])
    np.testing.assert_array_equal(got[0], ids[brute(emb, queries[:1], 10)[0]])
    s, got = idx.search(queries[:1], 2000)  # k larger than the catalogue
    assert (got[0, :1500] >= 0).all() and (got[0, 1500:] == -1).all() and np.isneginf(s[0, 1500:]).all()


def test_approximate_parts_keep_their_own_search_params(emb, queries):
    s = settings(factory="IVF16,PQ16x4fsr,RFlat", search_params={"nprobe": 4, "k_factor_rf": 4},
                 norm_strata=[{"share": 0.1, "factory": "IVF8,Flat", "search_params": {"nprobe": 8}}], train_size=None)
    idx = build_index(emb, s)
    assert faiss.downcast_index(idx.parts[0].index).nprobe == 8
    tail = faiss.downcast_index(idx.parts[1].index)
    assert tail.k_factor == 4 and faiss.downcast_index(tail.base_index).nprobe == 4
    _, ids = idx.search(queries, 20)
    ref = brute(emb, queries, 20)
    assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, ref)]) >= 0.6


def test_save_and_load_roundtrip(tmp_path, queries):
    bundle = make_bundle(tmp_path / "b", n_items=400, dim=16, encoder=False)
    e = np.load(bundle / "item_embeddings.npy")
    s = settings(factory="IVF8,Flat", search_params={"nprobe": 8}, train_size=None)
    idx = build_index(e, s)
    man = IndexManifest(name="t", backend="faiss", factory=s.factory, metric="inner_product", n_items=400, dim=16,
                        search_params=s.search_params, filter="overfetch", overfetch=4, device="cpu",
                        build_seconds=0.0, recall_at_k=1.0, recall_k=100, recall_queries=10,
                        recall_query_source="test", torch_dtype="auto", code_version="x", norm_strata=s.norm_strata)
    save_index(idx, bundle / "index", man)
    loaded = load_index(bundle)
    assert isinstance(loaded, NormRangedIndex) and loaded.n_items == 400 and len(loaded.parts) == 2
    assert faiss.downcast_index(loaded.parts[1].index).nprobe == 8
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], idx.search(queries, 10)[1])
    (bundle / "index" / "index.part1.faiss").unlink()
    with pytest.raises(BundleError, match=r"index.part1.faiss: missing"):
        load_index(bundle)
    (bundle / "index" / "part_rows.npz").write_bytes(b"junk")
    with pytest.raises(BundleError, match=r"part_rows.npz: missing or unreadable"):
        load_index(bundle)


@pytest.mark.parametrize("strata,match", [
    ([{"share": 0.6, "factory": "Flat"}, {"share": 0.5, "factory": "Flat"}], r"index.norm_strata: shares \[0.6, 0.5\] must sum"),
    ([{"share": 0.0, "factory": "Flat"}], r"index.norm_strata\[0\].share=0.0: expected a fraction"),
    ([{"share": 0.1}], r"index.norm_strata\[0\].factory is required"),
    ([{"share": 0.1, "factory": "Flat", "nprobe": 3}], r"index.norm_strata\[0\]: unknown setting\(s\) \['nprobe'\]"),
])
def test_bad_strata_fail_at_config_time(strata, match):
    with pytest.raises(IndexConfigError, match=match):
        settings(norm_strata=strata)


@pytest.mark.parametrize("stratum,match", [
    ({"share": 0.01, "factory": "IVF64,Flat"}, r"index.norm_strata\[0\].factory='IVF64,Flat': nlist=64 is larger than the catalogue \(15 items\)"),
    ({"share": 0.1, "factory": "IVF8,Flat", "search_params": {"nprobe": 16}}, r"index.norm_strata\[0\].search_params.nprobe=16 is larger than nlist=8"),
    ({"share": 0.1, "factory": "IVF8,Flat", "search_params": {"k_factor_rf": 2}}, r"index.norm_strata\[0\].search_params.k_factor_rf=2: not a parameter of index.norm_strata\[0\].factory"),
])
def test_stratum_that_does_not_fit_fails_before_building_and_names_it(emb, stratum, match):
    with pytest.raises(IndexConfigError, match=match):
        build_index(emb, settings(norm_strata=[stratum], train_size=None))


def test_strata_only_for_faiss():
    with pytest.raises(IndexConfigError, match="index.norm_strata: only for index.backend=faiss"):
        settings(backend="torch_exact", factory=None)


def test_filtered_search_params_apply_only_with_an_allowed_mask(emb, queries):
    s = settings(factory="IVF16,Flat", search_params={"nprobe": 1}, filtered_search_params={"nprobe": 16},
                 norm_strata=[], filter="selector", train_size=None)
    idx = build_index(emb, s)
    allowed = np.zeros(len(emb), bool)
    allowed[::4] = True
    _, ids = idx.search(queries, 10, allowed=allowed)  # every list probed: exact
    np.testing.assert_array_equal(ids, brute(emb, queries, 10, allowed=allowed))
    _, ids = idx.search(queries, 10)  # nprobe 1 without a mask: not every exact neighbour is found
    assert not np.array_equal(ids, brute(emb, queries, 10))
    with pytest.raises(IndexConfigError, match=r"index.filtered_search_params.nprobe=32 is larger than nlist=16"):
        build_index(emb, settings(factory="IVF16,Flat", filtered_search_params={"nprobe": 32}, norm_strata=[]))
