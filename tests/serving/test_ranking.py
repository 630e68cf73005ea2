"""serving.ranking without a trained ranker: load() says None; bad ranker files name the file."""
from __future__ import annotations

import pytest

from serving.bundle import BundleError
from serving.ranking import Ranker
from tests.toy_bundle import make_bundle


def test_load_returns_none_without_ranker(tmp_path):
    assert Ranker.load(make_bundle(tmp_path / "b", encoder=False)) is None


def test_ranker_without_spec_or_corrupt_names_file(tmp_path):
    b = make_bundle(tmp_path / "b", encoder=False)
    (b / "ranker.onnx").write_bytes(b"junk")
    with pytest.raises(BundleError, match="ranker.json: missing"):
        Ranker.load(b)
    (b / "ranker.json").write_text("{not json")
    with pytest.raises(BundleError, match="ranker.json: not a valid"):
        Ranker.load(b)


def test_cuda_provider_only_when_the_session_really_gets_it(tmp_path, monkeypatch):
    """ORT lists CUDA on GPU wheels even without a GPU: the provider recorded is what the session got."""
    import onnxruntime as ort
    import torch

    from serving.bundle.sessions import make_session

    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(3, 1), (torch.ones(2, 3),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    sess, provider = make_session(path)
    assert provider == ("CUDAExecutionProvider" if "CUDAExecutionProvider" in sess.get_providers() else "CPUExecutionProvider")
    assert provider in sess.get_providers()


# --- models.ranker.ItemTable.build: the vectorised category codes equal the per-item loop they replaced -------------

def _old_category_codes(items, n, spec):
    """The category codes as ``ItemTable.build`` computed them before (a Python loop over the items)."""
    import numpy as np
    import pandas as pd

    items = items.set_index("item_id").reindex(np.arange(n))
    cat_code = {c: i + 1 for i, c in enumerate(spec.categories)}
    cats = items["category"] if "category" in items else pd.Series([None] * n)
    return np.array([cat_code.get(str(c), 0) if pd.notna(c) else 0 for c in cats], np.int64)


def _category_cases():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 60
    strs = np.array(["shoes", "bags", "hats", "zzz-not-in-spec"], object)[rng.integers(0, 4, n)]
    strs[::7] = None
    strs[3::11] = np.nan
    mixed = np.array([1, "1", 2.0, "a", None, 3], object)[rng.integers(0, 6, n)]
    ints = rng.integers(0, 5, n).astype(float)
    ints[::9] = np.nan
    return {
        "object_str": pd.Series(strs, dtype=object),
        "pandas_str": pd.Series(strs, dtype=object).astype("str"),
        "arrow_str": pd.Series(strs, dtype=object).astype("string[pyarrow]"),
        "categorical": pd.Series(strs, dtype=object).astype("category"),
        "float_ids": pd.Series(ints),
        "int_ids": pd.Series(rng.integers(0, 5, n)),
        "mixed_objects": pd.Series(mixed, dtype=object),   # 1 and "1": two equal category names in the spec
        "all_missing": pd.Series([None] * n, dtype=object),
        "absent": None,
    }


@pytest.mark.parametrize("case", list(_category_cases()))
def test_item_table_build_equals_the_old_loop(case):
    import numpy as np
    import pandas as pd

    from models.ranker import FeatureSpec, ItemTable

    rng = np.random.default_rng(1)
    cats = _category_cases()[case]
    n = 60
    items = pd.DataFrame({"item_id": rng.permutation(n + 5)[:n],   # shuffled, some ids beyond the embeddings, gaps
                          "price": rng.lognormal(1, 1, n), "popularity": rng.integers(0, 50, n)})
    if cats is not None:
        items["category"] = cats.to_numpy() if not isinstance(cats.dtype, pd.CategoricalDtype) else cats.values
        if str(cats.dtype) != "object":
            items["category"] = items["category"].astype(cats.dtype)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    fit_on = items if cats is not None else items.assign(category=None)
    spec = FeatureSpec.fit(fit_on.iloc[: n // 2], 4, n_price_buckets=4, channels=[], heads=["purchase"],
                           score_weights={"purchase": 1.0}, recent_window=3)
    if case == "object_str":
        spec.categories = [c for c in spec.categories if c != "zzz-not-in-spec"]  # a value outside the spec -> 0
    new, old = ItemTable.build(items, emb, spec), _old_category_codes(items, n, spec)
    assert new.category.dtype == old.dtype and np.array_equal(new.category, old)
    if cats is not None and case not in ("all_missing", "int_ids"):  # int ids turn float on reindex: "3.0" != "3"
        assert (new.category > 0).any()


def test_request_features_shortcuts_equal_numpy_reductions():
    """request_features computes mean / max / norm with bare ufunc reductions: bit-equal to np.mean & co."""
    import numpy as np
    import pandas as pd

    from models.ranker import FeatureSpec, ItemTable, build_batch, request_features
    from serving.ranking import RankRequest

    rng = np.random.default_rng(2)
    n, d = 400, 8
    items = pd.DataFrame({"item_id": np.arange(n), "category": [f"c{k}" for k in rng.integers(0, 6, n)],
                          "price": np.where(rng.random(n) < 0.2, np.nan, rng.lognormal(2, 1, n)),
                          "popularity": rng.integers(0, 50, n)})
    spec = FeatureSpec.fit(items, d, n_price_buckets=4, channels=[], heads=["purchase"], score_weights={"purchase": 1.0},
                           recent_window=4, user_features=["a"], user_cardinalities=[3])
    t = ItemTable.build(items, rng.normal(size=(n, d)).astype(np.float32), spec)
    for _ in range(50):
        hist = rng.integers(0, n, rng.integers(1, 12))
        cand = rng.choice(n, 30, replace=False)
        u = rng.normal(size=d).astype(np.float32)
        req = RankRequest(user_emb=u, history=hist, candidates=cand, retrieval_scores=np.zeros(30, np.float32),
                          user_feat=np.array([rng.integers(-1, 5)]))
        dense, cat = request_features(t, spec, req)
        sims = t.unit[cand] @ t.unit[hist[-4:]].T
        assert np.array_equal(dense[:, 10], sims.mean(axis=1)) and np.array_equal(dense[:, 11], sims.max(axis=1))
        known = t.has_price[hist] > 0
        if known.any():
            gap = np.abs(t.log_price[cand] - t.log_price[hist][known].mean())
            assert np.array_equal(dense[:, 12], np.where(t.has_price[cand] > 0, gap, 0.0).astype(np.float32))
        assert np.array_equal(dense[:, 13], np.full(30, float(np.linalg.norm(u)), np.float32))
        code = int(req.user_feat[0])
        assert (cat[:, 5] == (code if 0 <= code < 3 else 0)).all()
        one = build_batch(t, spec, [req])
        two = build_batch(t, spec, [req, req])
        assert np.array_equal(one.dense, two.dense[:30]) and np.array_equal(one.cat, two.cat[30:])
        assert np.array_equal(one.user_emb, two.user_emb[:30]) and np.array_equal(one.item_emb, two.item_emb[30:])
        assert one.user_emb.flags.c_contiguous and one.item_emb.flags.c_contiguous
