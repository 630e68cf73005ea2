"""When and how users are active: their usual hour and weekday, preferred channel, browsing counts.

- timezone: each user's IANA zone: their country's zone from ``profile.activity.country_timezones``
  (a small table in ``conf/profile/default.yaml``), else the default ``profile.activity.timezone``.
- active_hour (0-23) / active_dow (0 = Monday): the hour and weekday with most events, in the
  user's own time zone (ties: the earliest). Null when the data's time is only an order position
  (manifest ``time_kind: order``). Campaign send times (``serving.audience``) are built from these
  local hours and converted back to UTC with the same zone.
- preferred_channel: the most used value of an event ``channel`` column, or a user ``preferred_channel``
  column, when the data has one. Online Retail and Taobao have none: null.
- browsing counts: n_events, n_views (views + clicks), n_carts, n_favs, n_purchase_lines,
  view_to_purchase (n_views / max(1, purchase lines)), n_items and n_categories touched.
"""
from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

VIEW_EVENTS = ("view", "click")


def _mode_per_user(users: pd.Series, values: pd.Series) -> pd.Series:
    """Most frequent value per user (ties -> the smallest value), vectorised."""
    counts = pd.DataFrame({"u": users.to_numpy(), "v": values.to_numpy()}).dropna().value_counts().rename("n").reset_index()
    counts = counts.sort_values(["u", "n", "v"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("u").set_index("u")["v"]


def _check_zone(zone: Any, field: str) -> str:
    if not isinstance(zone, str) or not zone:
        raise ValueError(f"{field}: time zone must be an IANA name such as 'Europe/London', got {zone!r}")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{field}: unknown time zone {zone!r}") from exc
    return zone


def user_timezones(users: pd.DataFrame, user_ids: pd.Index, act_cfg: dict[str, Any]) -> pd.Series:
    """IANA zone per user: ``country_timezones[country]`` where the users table has a known country,
    else the default ``timezone``. Every zone of the table is checked, naming the entry."""
    default = _check_zone(act_cfg["timezone"], "profile.activity.timezone")
    table = act_cfg.get("country_timezones") or {}
    for country, zone in table.items():
        _check_zone(zone, f"profile.activity.country_timezones.{country}")
    out = pd.Series(default, index=user_ids, dtype="string", name="timezone")
    if table and "country" in users.columns:
        country = users.set_index("user_id")["country"].reindex(user_ids)
        zone = country.map({str(k): str(v) for k, v in table.items()})
        out = zone.fillna(default).astype("string").rename("timezone")
    return out


def _local_parts(ts: pd.Series, zone_of_event: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(hour, weekday) of each event in its user's zone; one tz conversion per distinct zone."""
    hour = np.empty(len(ts), dtype=np.int64)
    dow = np.empty(len(ts), dtype=np.int64)
    codes, zones = pd.factorize(zone_of_event)
    for j, zone in enumerate(zones):
        idx = np.flatnonzero(codes == j)
        local = ts.iloc[idx].dt.tz_convert(zone)
        hour[idx] = local.dt.hour.to_numpy()
        dow[idx] = local.dt.dayofweek.to_numpy()
    return hour, dow


def active_times(events: pd.DataFrame, user_ids: pd.Index, act_cfg: dict[str, Any], time_kind: str,
                 zones: pd.Series | None = None) -> pd.DataFrame:
    """Active hour and weekday per user in ``zones`` (user_id -> IANA zone; default: every user in
    ``act_cfg['timezone']``)."""
    default = _check_zone(act_cfg["timezone"], "profile.activity.timezone")
    out = pd.DataFrame(index=user_ids)
    if time_kind == "order":
        out["active_hour"] = pd.Series(pd.NA, index=user_ids, dtype="Int64")
        out["active_dow"] = pd.Series(pd.NA, index=user_ids, dtype="Int64")
        return out
    if zones is None or zones.nunique() <= 1:
        local = events["ts"].dt.tz_convert(default if zones is None or zones.empty else str(zones.iloc[0]))
        hour, dow = local.dt.hour, local.dt.dayofweek
    else:
        zone_of_event = events["user_id"].map(zones).fillna(default).astype(str)
        h, d = _local_parts(events["ts"], zone_of_event)
        hour, dow = pd.Series(h, index=events.index), pd.Series(d, index=events.index)
    out["active_hour"] = _mode_per_user(events["user_id"], hour).reindex(user_ids).astype("Int64")
    out["active_dow"] = _mode_per_user(events["user_id"], dow).reindex(user_ids).astype("Int64")
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
