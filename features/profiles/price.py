"""Price sensitivity: how often a user pays less than the usual price of what they buy.

Proxy (the one Online Retail allows: it has a unit price per invoice line, and the same stock code
sells at several prices): the share of the user's priced purchase lines whose unit price is below the
item's median unit price over all purchase lines before the snapshot, by more than ``tolerance``
(relative). Items with fewer than ``min_item_lines`` priced lines are compared with their category's
median instead, and skipped when they have no category. Data without prices (Taobao) gives null.

Columns: ``price_sensitivity`` float in [0, 1] or null, ``n_priced_lines`` int (lines compared).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PROXY = "share of priced purchase lines paid below the item's median unit price (category median for rare items)"


def price_sensitivity(user_ids: pd.Index, purchases: pd.DataFrame, items: pd.DataFrame, price_cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per user in ``user_ids``: price_sensitivity, n_priced_lines."""
    tol, min_lines = float(price_cfg["tolerance"]), int(price_cfg["min_item_lines"])
    if not 0 <= tol < 1:
        raise ValueError(f"profile.price.tolerance must be in [0, 1), got {tol}")
    priced = purchases.loc[purchases["price"].notna() & (purchases["price"] > 0), ["user_id", "item_id", "price"]]
    out = pd.DataFrame(index=user_ids)
    if priced.empty:
        out["price_sensitivity"] = np.nan
        out["n_priced_lines"] = 0
        return out
    per_item = priced.groupby("item_id")["price"].agg(["median", "size"])
    ref = per_item["median"].where(per_item["size"] >= min_lines)
    category = items.set_index("item_id")["category"] if "category" in items.columns else pd.Series(dtype="string")
    line_cat = priced["item_id"].map(category)
    cat_median = priced.assign(cat=line_cat).dropna(subset=["cat"]).groupby("cat")["price"].median()
    line_ref = priced["item_id"].map(ref).fillna(line_cat.map(cat_median))
    compared = priced.assign(below=priced["price"] < line_ref * (1 - tol))[line_ref.notna()]
    by_user = compared.groupby("user_id")["below"].agg(["mean", "size"])
    out["price_sensitivity"] = by_user["mean"].reindex(user_ids).astype("float64")
    out["n_priced_lines"] = by_user["size"].reindex(user_ids).fillna(0).astype("int64")
    return out
