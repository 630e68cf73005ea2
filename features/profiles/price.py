"""Price sensitivity: how often a user pays less than the usual price of what they buy.

Proxy (the one Online Retail allows: it has a unit price per invoice line, and the same stock code
sells at several prices): the share of the user's priced purchase lines whose unit price is below the
item's median unit price over all purchase lines before the snapshot, by more than ``tolerance``
(relative). Online Retail is a wholesaler whose unit price falls with the quantity bought, so lines
are compared within quantity tiers (``quantity_tiers``: lower bounds; [] = no tiers): a bulk buyer
paying the bulk price is not price-sensitive, a buyer paying below the usual price for that quantity
is. Item-tier groups with fewer than ``min_item_lines`` lines fall back to the item's median, then
to the category's. Data without prices (Taobao) gives null.

Columns: ``price_sensitivity`` float in [0, 1] or null, ``n_priced_lines`` int (lines compared).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PROXY = ("share of priced purchase lines paid below the item's median unit price for the same quantity tier "
         "(item median, then category median, where a tier has too few lines)")


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
    tiers = [float(t) for t in price_cfg["quantity_tiers"]]
    qty = purchases.loc[priced.index, "quantity"].astype("float64").fillna(1.0).abs()
    tier = np.searchsorted(np.asarray(tiers), qty.to_numpy(), side="right") if tiers else np.zeros(len(priced), dtype=int)
    priced = priced.assign(tier=tier)
    per_tier = priced.groupby(["item_id", "tier"])["price"].agg(["median", "size"])
    tier_ref = per_tier["median"].where(per_tier["size"] >= min_lines)
    per_item = priced.groupby("item_id")["price"].agg(["median", "size"])
    ref = per_item["median"].where(per_item["size"] >= min_lines)
    category = items.set_index("item_id")["category"] if "category" in items.columns else pd.Series(dtype="string")
    line_cat = priced["item_id"].map(category)
    cat_median = priced.assign(cat=line_cat).dropna(subset=["cat"]).groupby("cat")["price"].median()
    keys = pd.MultiIndex.from_arrays([priced["item_id"], priced["tier"]])
    line_ref = pd.Series(tier_ref.reindex(keys).to_numpy(), index=priced.index)
    line_ref = line_ref.fillna(priced["item_id"].map(ref)).fillna(line_cat.map(cat_median))
    compared = priced.assign(below=priced["price"] < line_ref * (1 - tol))[line_ref.notna()]
    by_user = compared.groupby("user_id")["below"].agg(["mean", "size"])
    out["price_sensitivity"] = by_user["mean"].reindex(user_ids).astype("float64")
    out["n_priced_lines"] = by_user["size"].reindex(user_ids).fillna(0).astype("int64")
    return out
