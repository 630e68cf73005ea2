"""RFM: values, quintile scores and named groups."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from features.profiles.common import quintile_score, split_purchases
from features.profiles.rfm import name_groups, rfm_table

SNAP = pd.Timestamp("2024-02-01", tz="UTC")


def _events(rows):
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "price", "quantity", "order_id"])
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    return ev


def test_quintile_score_orders_and_ties():
    s = pd.Series([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=float)
    up = quintile_score(s)
    assert up.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert quintile_score(s, higher_is_better=False).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    ties = quintile_score(pd.Series([1.0] * 6 + [2.0, 3.0, 4.0, 5.0]))     # 60 % one-order customers
    assert ties.tolist() == [1] * 6 + [4, 4, 5, 5]


def test_rfm_values_orders_returns_and_non_buyers():
    ev = _events([
        (0, 1, "purchase", "2024-01-31 10:00", 10.0, 2, "A"),   # order A: 2 lines
        (0, 2, "purchase", "2024-01-31 10:00", 5.0, 1, "A"),
        (0, 1, "purchase", "2024-01-01 09:00", 10.0, 1, "B"),
        (0, 1, "return", "2024-01-31 12:00", 10.0, 1, "C1"),    # returns one unit: -10
        (1, 3, "purchase", "2024-01-11 00:00", 4.0, None, None),  # no order id: one order per day
        (1, 3, "purchase", "2024-01-11 05:00", 4.0, None, None),
        (1, 3, "purchase", "2024-01-12 05:00", 4.0, None, None),
        (2, 3, "view", "2024-01-30 00:00", None, None, None),
    ])
    purchases, returns = split_purchases(ev, ["purchase"], ["return"])
    groups = [{"name": "top", "r": [4, 5], "f": [1, 5]}, {"name": "rest", "r": [1, 5], "f": [1, 5]}]
    out = rfm_table(pd.Index([0, 1, 2]), purchases, returns, SNAP, {"groups": groups, "no_purchase_group": "none"})
    assert out.loc[0, "frequency"] == 2 and out.loc[1, "frequency"] == 2
    assert out.loc[0, "monetary"] == pytest.approx(20 + 5 + 10 - 10)
    assert out.loc[1, "monetary"] == pytest.approx(12.0)
    assert out.loc[0, "recency_days"] == pytest.approx((SNAP - pd.Timestamp("2024-01-31 10:00", tz="UTC")).total_seconds() / 86400)
    assert np.isnan(out.loc[2, "recency_days"]) and out.loc[2, "frequency"] == 0
    assert out.loc[2, "rfm_group"] == "none" and out.loc[2, ["r_score", "f_score", "m_score"]].tolist() == [1, 1, 1]
    assert out.loc[0, "r_score"] > out.loc[1, "r_score"]
    assert out.loc[0, "m_score"] > out.loc[1, "m_score"]


def test_rfm_without_prices_has_null_monetary_and_scores_units():
    ev = _events([
        (0, 1, "purchase", "2024-01-30", None, 5, "A"),
        (1, 1, "purchase", "2024-01-30", None, 1, "B"),
    ])
    purchases, returns = split_purchases(ev, ["purchase"], ["return"])
    out = rfm_table(pd.Index([0, 1]), purchases, returns, SNAP, {"groups": [], "no_purchase_group": "none"})
    assert out["monetary"].isna().all()
    assert out.loc[0, "m_score"] > out.loc[1, "m_score"]


def test_default_rfm_groups_cover_every_score_pair(pcfg):
    pairs = list(itertools.product(range(1, 6), range(1, 6)))
    r = pd.Series([p[0] for p in pairs])
    f = pd.Series([p[1] for p in pairs])
    names = name_groups(r, f, pcfg["rfm"]["groups"])
    assert "other" not in set(names)
    lookup = dict(zip(pairs, names))
    assert lookup[(5, 5)] == "champions" and lookup[(1, 1)] == "lost" and lookup[(1, 5)] == "cant_lose"
    assert lookup[(5, 1)] == "new" and lookup[(2, 3)] == "at_risk"


def test_group_rule_without_range_is_named():
    with pytest.raises(ValueError, match="has no 'f'"):
        name_groups(pd.Series([1]), pd.Series([1]), [{"name": "x", "r": [1, 5]}])
