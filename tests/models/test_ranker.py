"""models.ranker: the shared feature builder computes what its names say; DCN-v2 shapes and heads."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from models.ranker import (
    CAT_FEATURES, DENSE_FEATURES, DCNv2Ranker, FeatureSpec, ItemTable, build_batch, combine_heads,
)
from tests.toy_bundle import make_bundle

torch.set_num_threads(1)
F = {n: i for i, n in enumerate(DENSE_FEATURES)}


@pytest.fixture(scope="module")
def table_spec(tmp_path_factory):
    b = make_bundle(tmp_path_factory.mktemp("b") / "bundle", n_items=100, dim=8, encoder=False)
    items = pd.read_parquet(b / "items.parquet")
    emb = np.load(b / "item_embeddings.npy")
    spec = FeatureSpec.fit(items, 8, n_price_buckets=4, channels=["web", "app"], heads=["purchase", "return"],
                           score_weights={"purchase": 1.0, "return": -0.5}, recent_window=3)
    return ItemTable.build(items, emb, spec), spec, items


def req(history, candidates, channel=None, hour=13, dow=2):
    return SimpleNamespace(user_emb=np.ones(8, np.float32), history=np.array(history), candidates=np.array(candidates),
                           retrieval_scores=np.linspace(1, 0, len(candidates)).astype(np.float32), hour=hour, dow=dow,
                           channel=channel)


def test_history_features(table_spec):
    table, spec, items = table_spec
    b = build_batch(table, spec, [req([5, 7, 5, 9], [5, 9, 7, 42], channel="app")])
    d = b.dense
    np.testing.assert_allclose(d[:, F["log_hist_count"]], np.log1p([2, 1, 1, 0]), rtol=1e-6)
    np.testing.assert_array_equal(d[:, F["in_history"]], [1, 1, 1, 0])
    # 9 is the newest (0 events since), 5 one event back, 7 two back
    np.testing.assert_allclose(d[:, F["hist_recency"]], [1 / 2, 1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(d[:, F["retrieval_rank"]], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(d[:, F["log_hist_len"]], np.log1p(4))
    np.testing.assert_allclose(d[:, F["sim_recent_max"]][0], 1.0, rtol=1e-5)  # candidate 5 is in the window
    cat_of = items.set_index("item_id")["category"]
    share = np.mean([cat_of[h] == cat_of[42] for h in [5, 7, 5, 9]])
    assert d[3, F["cat_share"]] == pytest.approx(share)
    assert (b.cat[:, CAT_FEATURES.index("hour")] == 13).all() and (b.cat[:, CAT_FEATURES.index("dow")] == 2).all()
    assert (b.cat[:, CAT_FEATURES.index("channel")] == 2).all()  # "app" = second channel
    assert b.user_emb.shape == (4, 8) and np.array_equal(b.item_emb, table.embeddings[[5, 9, 7, 42]])


def test_unknown_values_and_empty_history(table_spec):
    table, spec, _ = table_spec
    b = build_batch(table, spec, [req([], [1, 2], channel="fax")])
    assert (b.cat[:, CAT_FEATURES.index("channel")] == 0).all()
    assert (b.dense[:, F["in_history"]] == 0).all() and np.isfinite(b.dense).all()
    nan_price_item = 0  # toy bundle: every 17th item has no price
    b = build_batch(table, spec, [req([3], [nan_price_item])])
    assert b.dense[0, F["has_price"]] == 0 and b.cat[0, CAT_FEATURES.index("price_bucket")] == 0


def test_batch_offsets_and_bad_input(table_spec):
    table, spec, _ = table_spec
    b = build_batch(table, spec, [req([1], [1, 2, 3]), req([2], [4]), req([3], [])])
    assert b.offsets.tolist() == [0, 3, 4, 4] and b.dense.shape == (4, len(DENSE_FEATURES))
    with pytest.raises(ValueError, match="candidates"):
        build_batch(table, spec, [req([1], [1000])])
    bad = req([1], [1, 2])
    bad.user_emb = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="user_emb"):
        build_batch(table, spec, [bad])


def test_spec_json_roundtrip_and_price_buckets(table_spec):
    _, spec, items = table_spec
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.cat_cardinalities == spec.cat_cardinalities
    assert len(spec.price_edges) == 3 and spec.categories == sorted(items["category"].unique())


def test_dcnv2_shapes_heads_and_combination(table_spec):
    table, spec, _ = table_spec
    b = build_batch(table, spec, [req([1, 2], list(range(10)))])
    net = DCNv2Ranker(len(DENSE_FEATURES), spec.cat_cardinalities, 8, 2, hidden=(16,)).eval()
    net.set_normalisation(b.dense.mean(0), b.dense.std(0))
    probs = net(*(torch.from_numpy(x) for x in (b.dense, b.cat, b.user_emb, b.item_emb))).detach().numpy()
    assert probs.shape == (10, 2) and ((probs > 0) & (probs < 1)).all()
    np.testing.assert_allclose(combine_heads(probs, spec), probs[:, 0] - 0.5 * probs[:, 1], rtol=1e-6)


def test_dcnv2_learns_a_cross_feature():
    """A label that is the product of two inputs (what cross layers exist for) is learnt."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 4000
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    y = ((dense[:, 0] * dense[:, 1]) > 0).astype(np.float32)[:, None]
    net = DCNv2Ranker(3, [2], 4, 1, hidden=(16,), dropout=0.0)
    cat = np.zeros((n, 1), np.int64)
    ue = np.zeros((n, 4), np.float32)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    args = [torch.from_numpy(x) for x in (dense, cat, ue, ue)]
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net.logits(*args), torch.from_numpy(y))
        loss.backward()
        opt.step()
    acc = ((net(*args).detach().numpy() > 0.5) == y).mean()
    assert acc > 0.9


def test_user_features_are_trailing_categorical_columns(table_spec):
    table, _, items = table_spec
    spec = FeatureSpec.fit(items, 8, n_price_buckets=4, channels=[], heads=["purchase"], score_weights={"purchase": 1.0},
                           recent_window=3, user_features=["attr_country", "activity"], user_cardinalities=[4, 6])
    assert spec.cat_features == [*CAT_FEATURES, "user_attr_country", "user_activity"]
    assert spec.cat_cardinalities[-2:] == [4, 6] and FeatureSpec.from_json(spec.to_json()) == spec
    r = req([1], [1, 2, 3])
    r.user_feat = np.array([2, 9])                       # 9 is outside the fitted buckets: unknown
    b = build_batch(table, spec, [r, req([1], [4])])     # the second request has no user features: all unknown
    assert b.cat.shape == (4, len(CAT_FEATURES) + 2)
    assert b.cat[:3, -2:].tolist() == [[2, 0]] * 3 and b.cat[3, -2:].tolist() == [0, 0]
    r.user_feat = np.array([1])
    with pytest.raises(ValueError, match="user_feat"):
        build_batch(table, spec, [r])
    net = DCNv2Ranker(len(DENSE_FEATURES), spec.cat_cardinalities, 8, 1, hidden=(16,)).eval()
    assert net(*(torch.from_numpy(x) for x in (b.dense, b.cat, b.user_emb, b.item_emb))).shape == (4, 1)
