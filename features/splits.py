"""Train / validation / test splits of a cleaned events table.

- ``loo`` (leave-one-out by time, per user): with ``target_events`` null every event is a target;
  otherwise only those event types are (e.g. ``[purchase]`` on Online Retail, so a return is never
  a test label). Per user, ordered by (ts, src_row): test = the last target event, valid = the
  second-to-last target event, train = every event (any type) before the valid one. Events after
  the valid one that are not the test event (e.g. a later return) are in no part (counted as
  ``excluded``). Users with fewer than ``min_targets`` (3) target events keep everything in train.
- ``temporal`` (global cut-off dates): train = ts < valid_start, valid = valid_start <= ts <
  test_start, test = ts >= test_start; all event types. Not made where time is only an order.

The **shop protocol** (``trainer.eval.split=shop``; no files of its own, it reads the temporal split):
predict, from every event before a cut-off, the set of items of each user's next basket(s) after it.
``shop_targets`` keeps, per user with at least one event before the cut-off, the purchase lines of the
first ``baskets`` baskets in the period after it (valid: [valid_start, test_start), history = train;
test: from test_start, history = train + valid). A basket is an order (``order_id``) or, where the data
has no order ids, a calendar day (UTC). Returns and other event types are never targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError


@dataclass
class Split:
    kind: str
    rows: dict[str, np.ndarray]  # train / valid / test: positions into the events table (ascending)
    n_excluded: int = 0

    def counts(self) -> dict[str, int]:
        out = {k: int(len(v)) for k, v in self.rows.items()}
        out["excluded"] = int(self.n_excluded)
        return out

    def frames(self, events: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {k: events.iloc[v].reset_index(drop=True) for k, v in self.rows.items()}


def loo_split(events: pd.DataFrame, target_events: list[str] | None = None, min_targets: int = 3) -> Split:
    """Leave-one-out per user; ``events`` must be sorted by (user_id, ts, src_row)."""
    users = events["user_id"].to_numpy()
    n = len(events)
    is_target = events["event"].isin(target_events).to_numpy() if target_events else np.ones(n, dtype=bool)
    # Number of target events at or after each row, within the user (1 = the last target).
    rev_rank = np.zeros(n, dtype=np.int64)
    if n:
        t = pd.Series(is_target.astype(np.int64))
        rev_rank = t[::-1].groupby(users[::-1]).cumsum()[::-1].to_numpy()
    n_targets = pd.Series(is_target.astype(np.int64)).groupby(users).transform("sum").to_numpy()
    eligible = n_targets >= min_targets
    test = eligible & is_target & (rev_rank == 1)
    valid = eligible & is_target & (rev_rank == 2)
    # Rows before the valid row: the rank of targets at-or-after is >= 2 and the row is not the valid one,
    # or (a non-target row) has >= 2 targets still to come.
    before_valid = (rev_rank >= 3) | ((rev_rank == 2) & ~is_target)
    train = ~eligible | (eligible & before_valid)
    excluded = n - int(train.sum() + valid.sum() + test.sum())
    return Split("loo", {"train": np.flatnonzero(train), "valid": np.flatnonzero(valid), "test": np.flatnonzero(test)},
                 excluded)


def temporal_split(events: pd.DataFrame, valid_start: str, test_start: str) -> Split:
    """Global cut-off split (dates in UTC)."""
    try:
        v = pd.Timestamp(valid_start, tz="UTC") if pd.Timestamp(valid_start).tzinfo is None else pd.Timestamp(valid_start)
        t = pd.Timestamp(test_start, tz="UTC") if pd.Timestamp(test_start).tzinfo is None else pd.Timestamp(test_start)
    except ValueError as e:
        raise DataConfigError(f"data.splits.temporal: bad date ({valid_start!r}, {test_start!r}): {e}") from e
    if not v < t:
        raise DataConfigError(f"data.splits.temporal.valid_start={valid_start!r} must be before test_start={test_start!r}")
    ts = events["ts"]
    rows = {"train": np.flatnonzero((ts < v).to_numpy()), "valid": np.flatnonzero(((ts >= v) & (ts < t)).to_numpy()),
            "test": np.flatnonzero((ts >= t).to_numpy())}
    return Split("temporal", rows, 0)


SHOP = "shop"                      # the shop protocol's name (``trainer.eval.split``)
SHOP_TARGET_EVENTS = ("purchase",)


def split_files(protocol: str) -> str:
    """The split folder (``splits/<kind>/``) an evaluation protocol reads: the shop protocol reads ``temporal``."""
    return "temporal" if protocol == SHOP else protocol


def next_baskets(part: pd.DataFrame, baskets: int = 1, target_events=SHOP_TARGET_EVENTS) -> pd.DataFrame:
    """The ``target_events`` rows of each user's first ``baskets`` baskets in ``part`` (ordered by the
    basket's first event). A basket is an ``order_id`` or, for rows without one, a UTC calendar day."""
    if baskets < 1:
        raise ValueError(f"baskets must be >= 1, got {baskets}")
    ev = part[part["event"].isin(list(target_events))].sort_values(["user_id", "ts", "src_row"], kind="stable")
    if ev.empty:
        return ev.reset_index(drop=True)
    day = "day:" + ev["ts"].dt.floor("D").dt.strftime("%Y-%m-%d")
    key = ev["order_id"].astype("object").where(ev["order_id"].notna(), day) if "order_id" in ev else day
    firsts = pd.DataFrame({"user_id": ev["user_id"].to_numpy(), "basket": key.to_numpy()}).drop_duplicates()
    firsts["n"] = firsts.groupby("user_id").cumcount()
    firsts = firsts[firsts["n"] < baskets]
    keep = pd.MultiIndex.from_arrays([ev["user_id"], key]).isin(pd.MultiIndex.from_frame(firsts[["user_id", "basket"]]))
    return ev[keep].reset_index(drop=True)


def shop_targets(history: pd.DataFrame, period: pd.DataFrame, baskets: int = 1,
                 target_events=SHOP_TARGET_EVENTS) -> pd.DataFrame:
    """The shop protocol's targets: ``next_baskets`` of ``period`` for the users with a ``history``."""
    targets = next_baskets(period, baskets, target_events)
    return targets[targets["user_id"].isin(history["user_id"].unique())].reset_index(drop=True)


def make_splits(events: pd.DataFrame, cfg: Any, time_kind: str) -> list[Split]:
    """The splits the data config asks for (``data.splits``)."""
    cfg = cfg or {}
    out = []
    loo = cfg.get("loo") or {}
    if loo.get("enabled", True):
        out.append(loo_split(events, list(loo.get("target_events") or []) or None, int(loo.get("min_targets", 3))))
    temporal = cfg.get("temporal") or {}
    if time_kind == "time" and temporal.get("valid_start") and temporal.get("test_start"):
        out.append(temporal_split(events, str(temporal["valid_start"]), str(temporal["test_start"])))
    return out
