"""Category and brand affinity with time decay, and each user's top categories.

An event of type e, ``age`` days before the snapshot, adds ``event_weights[e] * 0.5 ** (age /
half_life_days)`` to the user's score for the item's category (and for each of the item's attribute
ids, the brand proxy the schema has: Amazon attributes are categories and brands). Scores are kept
positive and normalised to shares per user. Items without a category contribute nothing.

Data without categories but with product titles (Online Retail) get a product-type category from
``title_categories`` (config): the first group with a keyword that occurs as a word in the title,
else ``other``. Data with neither keep null categories (empty top_categories).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from features.profiles.common import days_between


def title_categories(items: pd.DataFrame, groups: dict[str, list[str]]) -> pd.Series:
    """Product-type category per item from keywords in its title (first matching group wins)."""
    titles = items["title"].astype("string").str.upper().fillna("")
    out = pd.Series(pd.NA, index=items.index, dtype="string")
    for name, words in groups.items():
        pattern = r"\b(?:" + "|".join(re.escape(str(w).upper()) for w in words) + r")"
        hit = out.isna() & titles.str.contains(pattern, regex=True)
        out[hit] = name
    return out.fillna("other")


def with_categories(items: pd.DataFrame, aff_cfg: dict[str, Any]) -> tuple[pd.DataFrame, str]:
    """``items`` with a usable category column, and where it came from (data / title keywords / none)."""
    has_cat = "category" in items.columns and items["category"].notna().any()
    if has_cat:
        return items, "data"
    if "title" in items.columns and aff_cfg["title_categories"]:
        return items.assign(category=title_categories(items, dict(aff_cfg["title_categories"]))), "title keywords (profile.affinity.title_categories)"
    return items, "none"


def event_weights(events: pd.DataFrame, snapshot: pd.Timestamp, aff_cfg: dict[str, Any]) -> pd.Series:
    """Decayed weight of every event (aligned with ``events``)."""
    half_life = float(aff_cfg["half_life_days"])
    if half_life <= 0:
        raise ValueError(f"profile.affinity.half_life_days must be > 0, got {half_life}")
    weights = dict(aff_cfg["event_weights"])
    unknown = sorted(set(events["event"].unique()) - set(weights))
    if unknown:
        raise ValueError(f"profile.affinity.event_weights has no weight for event types {unknown}")
    age = days_between(events["ts"], snapshot).clip(lower=0)
    return events["event"].map(weights).astype("float64") * np.power(0.5, age / half_life)


def decayed_affinity(user_ids: pd.Series, keys: pd.Series, weights: pd.Series, top_n: int) -> pd.DataFrame:
    """Long table (user_id, key, score, rank) of each user's ``top_n`` keys by decayed weight share."""
    frame = pd.DataFrame({"user_id": user_ids.to_numpy(), "key": keys.to_numpy(), "w": weights.to_numpy()}).dropna(subset=["key"])
    if frame.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "key": pd.Series(dtype="string"),
                             "score": pd.Series(dtype="float64"), "rank": pd.Series(dtype="int64")})
    score = frame.groupby(["user_id", "key"], sort=False)["w"].sum()
    score = score[score > 0].rename("score").reset_index()
    score["score"] = score["score"] / score.groupby("user_id")["score"].transform("sum")
    score = score.sort_values(["user_id", "score", "key"], ascending=[True, False, True], kind="stable")
    score["rank"] = score.groupby("user_id").cumcount() + 1
    top = score[score["rank"] <= top_n].reset_index(drop=True)
    top["key"] = top["key"].astype("string")
    return top


def top_lists(top: pd.DataFrame, user_ids: pd.Index) -> pd.Series:
    """Per user the list of their top keys, best first (empty list when none)."""
    top = top.sort_values(["user_id", "rank"], kind="stable")
    users = top["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.array([], dtype=int)
    chunks = np.split(top["key"].astype(str).to_numpy(dtype=object), starts[1:]) if len(users) else []
    keys = dict(zip(users[starts].tolist(), (c.tolist() for c in chunks)))
    return pd.Series([keys.get(u, []) for u in user_ids.tolist()], index=user_ids, dtype="object")


def affinities(events: pd.DataFrame, items: pd.DataFrame, snapshot: pd.Timestamp, aff_cfg: dict[str, Any]) -> pd.DataFrame:
    """Long table (user_id, kind in {category, attribute}, key, score, rank) of top affinities."""
    top_n = int(aff_cfg["top_n"])
    w = event_weights(events, snapshot, aff_cfg)
    item_index = items.set_index("item_id")
    parts = []
    if "category" in items.columns:
        cat = events["item_id"].map(item_index["category"])
        parts.append(decayed_affinity(events["user_id"], cat, w, top_n).assign(kind="category"))
    if "attributes" in items.columns:
        attrs = events["item_id"].map(item_index["attributes"])
        exploded = pd.DataFrame({"user_id": events["user_id"].to_numpy(), "attr": attrs.to_numpy(), "w": w.to_numpy()})
        exploded = exploded.explode("attr").dropna(subset=["attr"])
        if not exploded.empty:
            keys = exploded["attr"].astype("int64").astype("string")
            parts.append(decayed_affinity(exploded["user_id"], keys, exploded["w"], top_n).assign(kind="attribute"))
    if not parts:
        return decayed_affinity(events["user_id"], pd.Series(np.nan, index=events.index), w, top_n).assign(kind="category")
    return pd.concat(parts, ignore_index=True)[["user_id", "kind", "key", "score", "rank"]]
