"""Assemble one profile row per user from the processed events, items and users tables.

``build_profiles`` is a pure function (data frames in, data frames out) so tests and other stages can
call it without files; ``features.profile`` reads the processed data and writes the results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.profiles import activity, affinity, clv, consent, lifecycle, price, rfm, segments
from features.profiles.common import percentile, split_purchases

class _Stopwatch:
    """Wall and CPU seconds per stage (``lap(name)`` closes the stage started at the previous lap).
    CPU time is the honest figure on a shared machine, where wall time mostly measures the neighbours."""

    def __init__(self) -> None:
        self.last, self.last_cpu, self.laps, self.cpu = time.perf_counter(), time.process_time(), {}, {}

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[name], self.cpu[name] = round(now - self.last, 3), round(cpu - self.last_cpu, 3)
        self.last, self.last_cpu = now, cpu


PCT_COLUMNS = ("clv", "monetary", "frequency", "n_views", "churn_prob", "recency_days")


@dataclass
class ProfileTables:
    profiles: pd.DataFrame
    segments: pd.DataFrame
    flows: pd.DataFrame
    affinity: pd.DataFrame
    consent: consent.Consent
    snapshot: pd.Timestamp
    flows_from: pd.Timestamp
    info: dict[str, Any] = field(default_factory=dict)   # model parameters, chosen k, proxies (for the manifest)


def snapshot_dates(events: pd.DataFrame, pcfg: dict[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The snapshot date (config, else midnight after the last event) and the flows start date."""
    if events.empty:
        raise ValueError("no events to profile")
    if pcfg["snapshot_date"]:
        snap = pd.Timestamp(pcfg["snapshot_date"])
        snap = snap.tz_localize("UTC") if snap.tzinfo is None else snap.tz_convert("UTC")
    else:
        snap = events["ts"].max().floor("D") + pd.Timedelta(days=1)
    if pcfg["flows_from"]:
        start = pd.Timestamp(pcfg["flows_from"])
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    else:
        if float(pcfg["flows_days"]) <= 0:
            raise ValueError(f"profile.flows_days must be > 0, got {pcfg['flows_days']}")
        start = snap - pd.Timedelta(days=float(pcfg["flows_days"]))
    if events["ts"].min() >= snap:
        raise ValueError(f"profile.snapshot_date {snap} is before the first event ({events['ts'].min()})")
    return snap, start


def build_profiles(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, pcfg: dict[str, Any],
                   seed: int, time_kind: str = "timestamp") -> ProfileTables:
    """Profiles of every user with at least one event before the snapshot (see ``features.profile``)."""
    watch = _Stopwatch()
    lifecycle.check_windows(pcfg["lifecycle"])
    snap, flows_from = snapshot_dates(events, pcfg)
    buy_ev, ret_ev = list(pcfg["purchase_events"]), list(pcfg["return_events"])
    items, category_source = affinity.with_categories(items, pcfg["affinity"])
    ev = events[events["ts"] < snap]
    user_ids = pd.Index(np.sort(ev["user_id"].unique()), name="user_id")
    purchases, returns = split_purchases(ev, buy_ev, ret_ev)
    has_prices = bool(purchases["price"].notna().any())

    prof = pd.DataFrame(index=user_ids)
    ukeys = users.set_index("user_id")
    prof["user_key"] = ukeys["user_key"].reindex(user_ids).astype("string")
    if prof["user_key"].isna().any():
        missing = prof.index[prof["user_key"].isna()][:5].tolist()
        raise ValueError(f"users table has no user_key for user_id(s) {missing} that have events")
    prof["snapshot_date"] = snap
    prof = prof.join(rfm.rfm_table(user_ids, purchases, returns, snap, pcfg["rfm"]))
    watch.lap("rfm")
    prof["lifecycle"] = lifecycle.stages(lifecycle.activity_span(ev, snap, pcfg["lifecycle"], buy_ev), snap, pcfg["lifecycle"])
    watch.lap("lifecycle")
    prof = prof.join(price.price_sensitivity(user_ids, purchases, items, pcfg["price"]))
    watch.lap("price")
    aff = affinity.affinities(ev, items, snap, pcfg["affinity"])
    prof["top_categories"] = affinity.top_lists(aff[aff["kind"] == "category"], user_ids)
    prof["top_attributes"] = affinity.top_lists(aff[aff["kind"] == "attribute"], user_ids)
    watch.lap("affinity")
    prof["timezone"] = activity.user_timezones(users, user_ids, pcfg["activity"])
    prof = prof.join(activity.active_times(ev, user_ids, pcfg["activity"], time_kind, prof["timezone"]))
    prof["preferred_channel"] = activity.preferred_channel(ev, users, user_ids)
    prof = prof.join(activity.browsing_counts(ev, items, user_ids, buy_ev))
    watch.lap("activity")

    clv_cfg = pcfg["clv"]
    tx = purchases[["user_id", "ts", "value"]]
    summary = clv.rfm_summary(tx, snap, float(clv_cfg["time_unit_days"]))
    model = clv.fit(summary, clv_cfg, seed)
    if model is not None:
        pred = clv.predict(model, summary, float(clv_cfg["horizon_days"]))
        if not has_prices:
            pred["clv"] = np.nan
        prof = prof.join(pred[["expected_purchases", "p_alive", "churn_prob", "clv"]])
    else:
        for c in ("expected_purchases", "p_alive", "churn_prob", "clv"):
            prof[c] = np.nan
    watch.lap("clv")
    # Users who never purchased have no BG/NBD history: clv, churn_prob and p_alive stay null.

    if "country" in users.columns:
        prof["country"] = ukeys["country"].reindex(user_ids).astype("string")
    else:
        prof["country"] = pd.Series(pd.NA, index=user_ids, dtype="string")

    for c in PCT_COLUMNS:
        prof[f"{c}_pct"] = percentile(prof[c])
    clusters = segments.cluster(prof, pcfg["segments"], seed)
    watch.lap("clusters")
    prof["segment"] = clusters.labels
    rules, default = list(pcfg["named_segments"]), pcfg["default_named_segment"]
    prof["named_segment"] = segments.named_segments(prof, rules, default)
    seg_table = segments.segment_table(prof, clusters, prof["named_segment"], rules, default, pcfg["segments"])
    cluster_names = seg_table[seg_table["kind"] == "cluster"].set_index("segment")["name"]
    prof["segment_name"] = prof["segment"].map(cluster_names)

    cons = consent.resolve(prof["user_key"], pcfg["consent"], seed)
    prof = prof.join(consent.opt_out_flags(cons, prof["user_key"], list(pcfg["consent"]["channels"])))

    watch.lap("named_segments_consent")
    flows = lifecycle.lifecycle_flows(events, flows_from, snap, pcfg["lifecycle"], buy_ev)
    watch.lap("flows")
    prof = prof.reset_index()
    for c in ("rfm_group", "lifecycle", "named_segment", "segment_name"):
        prof[c] = prof[c].astype("string")
    info = {
        "has_prices": has_prices,
        "category_source": category_source,
        "activity_timezone": pcfg["activity"]["timezone"],
        "activity_timezones_used": {str(k): int(v) for k, v in prof["timezone"].value_counts().items()},
        "price_proxy": price.PROXY if has_prices else None,
        "monetary": "net revenue (purchases - returns, floored at 0)" if has_prices else "null: no prices; m_score ranks purchased units",
        "preferred_channel": "from the data" if prof["preferred_channel"].notna().any() else "null: the data has no channel",
        "clv_model": None if model is None else model.as_dict(),
        "segments": {"algorithm": clusters.algorithm, "k": clusters.k, "silhouette_by_k": clusters.silhouette_by_k},
        "consent_source": cons.source,
        "seconds_by_stage": watch.laps,
        "cpu_seconds_by_stage": watch.cpu,
    }
    return ProfileTables(prof, seg_table, flows, aff, cons, snap, flows_from, info)
