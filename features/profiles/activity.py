"""When and how users are active: their usual hour and weekday, preferred channel, browsing counts.

- active_hour (0-23) / active_dow (0 = Monday): the hour and weekday with most events, in the
  configured time zone (ties: the earliest). Null when the data's time is only an order position
  (manifest ``time_kind: order``).
- preferred_channel: the most used value of an event ``channel`` column, or a user ``preferred_channel``
  column, when the data has one. Online Retail and Taobao have none: null.
- browsing counts: n_events, n_views (views + clicks), n_carts, n_favs, n_purchase_lines,
  view_to_purchase (n_views / max(1, purchase lines)), n_items and n_categories touched.
"""
from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

VIEW_EVENTS = ("view", "click")


def _mode_per_user(users: pd.Series, values: pd.Series) -> pd.Series:
    """Most frequent value per user (ties -> the smallest value), vectorised."""
    counts = pd.DataFrame({"u": users.to_numpy(), "v": values.to_numpy()}).dropna().value_counts().rename("n").reset_index()
    counts = counts.sort_values(["u", "n", "v"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("u").set_index("u")["v"]


def active_times(events: pd.DataFrame, user_ids: pd.Index, act_cfg: dict[str, Any], time_kind: str) -> pd.DataFrame:
    try:
        ZoneInfo(act_cfg["timezone"])
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"profile.activity.timezone: unknown time zone {act_cfg['timezone']!r}") from exc
    out = pd.DataFrame(index=user_ids)
    if time_kind == "order":
        out["active_hour"] = pd.Series(pd.NA, index=user_ids, dtype="Int64")
        out["active_dow"] = pd.Series(pd.NA, index=user_ids, dtype="Int64")
        return out
    local = events["ts"].dt.tz_convert(act_cfg["timezone"])
    out["active_hour"] = _mode_per_user(events["user_id"], local.dt.hour).reindex(user_ids).astype("Int64")
    out["active_dow"] = _mode_per_user(events["user_id"], local.dt.dayofweek).reindex(user_ids).astype("Int64")
    return out


def preferred_channel(events: pd.DataFrame, users: pd.DataFrame, user_ids: pd.Index) -> pd.Series:
    if "channel" in events.columns and events["channel"].notna().any():
        return _mode_per_user(events["user_id"], events["channel"]).reindex(user_ids).astype("string")
    if "preferred_channel" in users.columns:
        return users.set_index("user_id")["preferred_channel"].reindex(user_ids).astype("string")
    return pd.Series(pd.NA, index=user_ids, dtype="string")


def browsing_counts(events: pd.DataFrame, items: pd.DataFrame, user_ids: pd.Index, purchase_events: list[str]) -> pd.DataFrame:
    ev = events["event"]
    flags = pd.DataFrame(
        {
            "user_id": events["user_id"].to_numpy(),
            "n_events": 1,
            "n_views": ev.isin(VIEW_EVENTS).to_numpy(),
            "n_carts": (ev == "cart").to_numpy(),
            "n_favs": (ev == "fav").to_numpy(),
            "n_purchase_lines": ev.isin(purchase_events).to_numpy(),
        }
    )
    out = flags.groupby("user_id").sum().astype("int64").reindex(user_ids, fill_value=0)
    out["view_to_purchase"] = out["n_views"] / out["n_purchase_lines"].clip(lower=1)
    out["n_items"] = events.groupby("user_id")["item_id"].nunique().reindex(user_ids).fillna(0).astype("int64")
    if "category" in items.columns:
        cat = events["item_id"].map(items.set_index("item_id")["category"])
        out["n_categories"] = cat.groupby(events["user_id"]).nunique().reindex(user_ids).fillna(0).astype("int64")
    else:
        out["n_categories"] = 0
    return out
