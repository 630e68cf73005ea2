"""RFM: recency, frequency and monetary value per user, quintile scores 1-5 and named RFM groups.

- recency_days: days from the last purchase to the snapshot (NaN for users who never purchased);
- frequency: distinct orders (``order_id``; purchase lines without one count one order per day);
- monetary: purchase revenue minus returned revenue, floored at 0 (NaN when the data has no prices);
- r/f/m_score: percentile quintiles among purchasing users (5 = most recent / most frequent / highest
  spend). Without prices m_score ranks purchased units instead. Non-purchasers score 1 everywhere
  and fall in the configured ``no_purchase_group``;
- rfm_group: the first configured (r, f) range rule that matches (champions, loyal, ..., lost).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.profiles.common import days_between, quintile_score


def order_keys(purchases: pd.DataFrame) -> pd.Series:
    """The order a purchase line belongs to: its order id, else the purchase day."""
    keys = purchases["order_id"].astype("string")
    missing = keys.isna()
    if missing.any():
        keys[missing] = "day:" + purchases.loc[missing, "ts"].dt.floor("D").astype("string")
    return keys


def rfm_table(
    user_ids: pd.Index, purchases: pd.DataFrame, returns: pd.DataFrame, snapshot: pd.Timestamp, rfm_cfg: dict[str, Any]
) -> pd.DataFrame:
    """One row per user in ``user_ids`` with the RFM columns described in the module docstring."""
    out = pd.DataFrame(index=user_ids)
    out.index.name = "user_id"
    has_prices = bool(purchases["price"].notna().any())

    p = purchases.assign(order=order_keys(purchases))
    by_user = p.groupby("user_id")
    last = by_user["ts"].max()
    out["recency_days"] = days_between(last, snapshot).reindex(user_ids).astype("float64")
    out["frequency"] = by_user["order"].nunique().reindex(user_ids).fillna(0).astype("int64")
    units = by_user["quantity"].sum(min_count=1).astype("float64").reindex(user_ids)
    units = units.fillna(by_user.size().reindex(user_ids).astype("float64")).fillna(0.0)
    if has_prices:
        spent = by_user["value"].sum().reindex(user_ids).fillna(0.0)
        returned = returns.groupby("user_id")["value"].sum().reindex(user_ids).fillna(0.0)
        out["monetary"] = (spent - returned).clip(lower=0.0)
    else:
        out["monetary"] = np.nan
    buyers = out["frequency"] > 0

    out["r_score"] = 1
    out["f_score"] = 1
    out["m_score"] = 1
    if buyers.any():
        b = out[buyers]
        out.loc[buyers, "r_score"] = quintile_score(b["recency_days"], higher_is_better=False)
        out.loc[buyers, "f_score"] = quintile_score(b["frequency"])
        m_basis = b["monetary"] if has_prices else units[buyers]
        out.loc[buyers, "m_score"] = quintile_score(m_basis)
    out["rfm_group"] = name_groups(out["r_score"], out["f_score"], rfm_cfg["groups"])
    out.loc[~buyers, "rfm_group"] = rfm_cfg["no_purchase_group"]
    return out


def name_groups(r: pd.Series, f: pd.Series, groups: list[dict[str, Any]]) -> pd.Series:
    """The first group whose inclusive ``r`` and ``f`` ranges hold the scores; ``other`` if none."""
    names = pd.Series("other", index=r.index, dtype="object")
    unset = pd.Series(True, index=r.index)
    for g in groups:
        for key in ("name", "r", "f"):
            if key not in g:
                raise ValueError(f"profile.rfm.groups: rule {dict(g)} has no '{key}'")
        (r_lo, r_hi), (f_lo, f_hi) = g["r"], g["f"]
        hit = unset & r.between(r_lo, r_hi) & f.between(f_lo, f_hi)
        names[hit] = g["name"]
        unset &= ~hit
    return names
