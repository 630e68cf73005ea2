"""Lifecycle stages (new, active, at_risk, dormant, churned) at a snapshot date, and the flows of users
between the stages of two snapshot dates.

A user is first seen at their first event; their last activity is their last purchase (``activity:
purchase``; users who never purchased: their last event) or their last event (``any``). With those
dates before the snapshot and the windows of ``profile.lifecycle`` (days):

- new: first seen within ``new_days``;
- active / at_risk / dormant: last activity within ``active_days`` / ``at_risk_days`` / ``dormant_days``;
- churned: older than that.

Users without any event before a snapshot are ``not_seen`` in the flows table (never in profiles).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.profiles.common import days_between

STAGES = ("new", "active", "at_risk", "dormant", "churned")
NOT_SEEN = "not_seen"


def check_windows(lc: dict[str, Any]) -> None:
    """Windows must be positive and nested: new ≤ active < at_risk < dormant."""
    keys = ("new_days", "active_days", "at_risk_days", "dormant_days")
    vals = [lc[k] for k in keys]
    if any(v is None or v <= 0 for v in vals):
        raise ValueError(f"profile.lifecycle: every window must be > 0 days, got {dict(zip(keys, vals))}")
    if not (vals[0] <= vals[1] < vals[2] < vals[3]):
        raise ValueError(
            "profile.lifecycle: windows must satisfy new_days <= active_days < at_risk_days < dormant_days, "
            f"got {dict(zip(keys, vals))}"
        )
    if lc["activity"] not in ("purchase", "any"):
        raise ValueError(f"profile.lifecycle.activity must be 'purchase' or 'any', got {lc['activity']!r}")


def activity_span(events: pd.DataFrame, snapshot: pd.Timestamp, lc: dict[str, Any], purchase_events: list[str]) -> pd.DataFrame:
    """First event and last activity per user before ``snapshot`` (index user_id, columns first, last)."""
    before = events[events["ts"] < snapshot]
    span = before.groupby("user_id")["ts"].agg(first="min", last="max")
    if lc["activity"] == "purchase":
        last_buy = before[before["event"].isin(purchase_events)].groupby("user_id")["ts"].max()
        span["last"] = last_buy.reindex(span.index).fillna(span["last"])
    return span


def stages(span: pd.DataFrame, snapshot: pd.Timestamp, lc: dict[str, Any]) -> pd.Series:
    """Lifecycle stage per user of ``span`` (output of ``activity_span``)."""
    since_first = days_between(span["first"], snapshot).to_numpy()
    since_last = days_between(span["last"], snapshot).to_numpy()
    stage = np.select(
        [
            since_first <= lc["new_days"],
            since_last <= lc["active_days"],
            since_last <= lc["at_risk_days"],
            since_last <= lc["dormant_days"],
        ],
        ["new", "active", "at_risk", "dormant"],
        default="churned",
    )
    return pd.Series(stage, index=span.index, name="lifecycle")


def lifecycle_flows(
    events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp, lc: dict[str, Any], purchase_events: list[str]
) -> pd.DataFrame:
    """Counts of users moving from their stage at ``start`` to their stage at ``end``.

    Columns: from_stage, to_stage, n_users, share_of_from (of the users in from_stage), from_date, to_date.
    """
    if not start < end:
        raise ValueError(f"profile.flows_from ({start}) must be before the snapshot date ({end})")
    at_end = stages(activity_span(events, end, lc, purchase_events), end, lc)
    at_start = stages(activity_span(events, start, lc, purchase_events), start, lc).reindex(at_end.index).fillna(NOT_SEEN)
    flows = pd.DataFrame({"from_stage": at_start, "to_stage": at_end}).value_counts().rename("n_users").reset_index()
    flows["share_of_from"] = flows["n_users"] / flows.groupby("from_stage")["n_users"].transform("sum")
    order = {s: i for i, s in enumerate((NOT_SEEN, *STAGES))}
    flows = flows.sort_values(["from_stage", "to_stage"], key=lambda s: s.map(order)).reset_index(drop=True)
    flows["n_users"] = flows["n_users"].astype("int64")
    flows["from_date"] = start
    flows["to_date"] = end
    return flows
