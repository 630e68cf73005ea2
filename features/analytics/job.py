"""The behaviour-analytics job: prepared events → funnel tables, figures, report, all written atomically.

``run(cfg)`` reads ``${paths.processed}/<data>/`` (``features.prepare``), the user segments of
``features.profile`` when they were built from the same events, and, for the service's own log
(``data=serve_events``, or ``analytics.live.enabled=true``), the exposure and attribution logs; it
writes ``${analytics.out_dir}`` (default ``${paths.reports}/analytics/<data>/``):

- ``summary.json``: every figure (funnels, abandonment, time to purchase, paths, repeat purchases,
  live funnel) and the reconciliation of the step counts with the events;
- ``funnel_by_day.csv``, ``funnel_by_category.csv``, ``funnel_by_segment.csv``, ``paths.csv``
  (and ``live_by_variant.csv``);
- ``report.html`` (self-contained: plots embedded as PNG) and the PNGs; ``manifest.json``.

The job refuses to write anything whose counts do not reconcile (``ReconciliationError``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.analytics import funnels as fn
from features.analytics.live import LiveFunnel, live_funnel
from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.processed import ProcessedDataError, load_events, load_items, load_manifest, processed_dir

log = logging.getLogger(__name__)
NO_CATEGORY, OTHER_CATEGORIES, NO_PROFILE = "(no category)", "(other categories)", "(no profile)"


@dataclass
class AnalyticsResult:
    out_dir: Path
    summary: dict[str, Any]
    seconds: float


def require_prepared(cfg: DictConfig) -> Path:
    """The processed folder, or a ``ProcessedDataError`` naming the command that makes it."""
    src = processed_dir(cfg)
    name = str(cfg.data.name)
    for f in ("manifest.json", "events.parquet", "items.parquet"):
        if not (src / f).exists():
            raise ProcessedDataError(f"{src / f} not found: prepare the data first: python -m features.prepare data={name}")
    return src


def _categories(ev: pd.DataFrame, items: pd.DataFrame, top: int) -> pd.Series:
    """Each event's item category; missing → ``(no category)``, beyond the ``top`` busiest → ``(other categories)``."""
    cat = ev["item_id"].map(items.set_index("item_id")["category"]).astype("string").fillna(NO_CATEGORY)
    busiest = cat[cat != NO_CATEGORY].value_counts().index[:top]
    return cat.where(cat.isin(busiest) | (cat == NO_CATEGORY), OTHER_CATEGORIES)


def _segments(ev: pd.DataFrame, src: Path, acfg: dict[str, Any], notes: list[str]) -> pd.Series | None:
    """Each event's user segment from the profiles, or None (with a note) when there are none to trust."""
    pdir = Path(acfg["profiles_dir"])
    col = str(acfg["segment_column"])
    if not (pdir / "profiles.parquet").exists():
        notes.append(f"no segments: {pdir / 'profiles.parquet'} not found (python -m features.profile data=<name>)")
        return None
    try:
        built_from = read_json(pdir / "manifest.json").get("inputs", {}).get("events.parquet")
    except (OSError, ValueError):
        built_from = None
    if built_from != file_sha256(src / "events.parquet"):
        notes.append(f"no segments: the profiles in {pdir} were built from other events than {src} "
                     f"(re-run python -m features.profile)")
        return None
    prof = pd.read_parquet(pdir / "profiles.parquet", columns=["user_id", col])
    seg = prof.set_index("user_id")[col].astype("string")
    return ev["user_id"].map(seg).astype("string").fillna(NO_PROFILE)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in df.astype(object).to_dict(orient="records")]


def _row(df: pd.DataFrame) -> dict[str, Any]:
    return _records(df)[0]


def run(cfg: DictConfig) -> AnalyticsResult:
    """Compute the analytics of ``cfg.data`` and write them to ``cfg.analytics.out_dir``."""
    started, cpu0 = time.perf_counter(), time.process_time()
    acfg = OmegaConf.to_container(cfg.analytics, resolve=True)
    name = str(cfg.data.name)
    src = require_prepared(cfg)
    manifest = load_manifest(src)
    if manifest.get("kind") == "tables":
        raise ValueError(f"data={name} holds tables only (no events): there is no behaviour to analyse")
    mapping = fn.step_map(acfg["steps"])
    notes: list[str] = []

    ev = load_events(src, columns=["user_id", "item_id", "event", "ts", "order_id", "src_row"])
    ev = ev.sort_values(["user_id", "ts", "src_row"], kind="stable").reset_index(drop=True)
    ev["step"] = fn.assign_steps(ev["event"], mapping)
    counts = fn.step_counts(ev["step"])
    fn.reconcile(counts, int(manifest["n_events"]), manifest.get("event_counts", {}), mapping)

    tz = str(acfg["day_timezone"])
    try:
        ev["day"] = ev["ts"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
    except Exception as e:   # an unknown zone name: zoneinfo and pytz raise different types
        raise ValueError(f"analytics.day_timezone: {tz!r} is not a time zone ({e})") from None
    ev["category"] = _categories(ev, load_items(src), int(acfg["top_categories"]))
    seg = _segments(ev, src, acfg, notes)
    if seg is not None:
        ev["segment"] = seg

    users = fn.ordered_funnel(ev, ["user_id"])
    pairs = fn.ordered_funnel(ev, ["user_id", "item_id"])
    by_day = fn.ordered_funnel(ev, ["user_id"], ["day"]).sort_values("day")
    by_cat = fn.ordered_funnel(ev, ["user_id"], ["category"])
    pooled = by_cat["category"].isin([OTHER_CATEGORIES, NO_CATEGORY])
    by_cat = by_cat.assign(_p=pooled).sort_values(["_p", "units"], ascending=[True, False], kind="stable").drop(columns="_p")
    by_seg = (fn.ordered_funnel(ev, ["user_id"], ["segment"]).sort_values("units", ascending=False, kind="stable")
              if seg is not None else None)
    for label, table in (("overall users", users), ("overall pairs", pairs), ("day", by_day), ("category", by_cat),
                         ("segment", by_seg)):
        if table is not None:
            fn.check_breakdown(label, table, counts)

    if counts["view"] == 0 and counts["cart"] == 0:
        notes.append("the data holds no views and no carts (purchases only): the funnels are degenerate (every unit "
                     "enters at purchase) and there is no cart abandonment or view-to-purchase time; the "
                     "repeat-purchase figures and the times between purchases hold")
    if manifest.get("time_kind") == "order":
        notes.append("the data has no real time (time_kind order): days and durations are positions, not times")
    abandonment = fn.cart_abandonment(ev)
    v2p = fn.view_to_purchase_hours(ev)
    repeat, occasions_dist, repeat_gap = fn.repeat_purchases(ev)
    paths = fn.purchase_paths(ev, float(acfg["session_gap_min"]), int(acfg["path_length"]))

    live: LiveFunnel | None = None
    live_on = acfg["live"]["enabled"]
    if live_on is None:
        live_on = name == "serve_events"
    if live_on:
        live = live_funnel(Path(acfg["live"]["event_log"]), Path(acfg["live"]["log_dir"]),
                           acfg["live"]["click_events"], acfg["live"]["purchase_events"])
        notes.extend(live.notes)
        same_log = cfg.data.get("path") and Path(str(cfg.data.path)).resolve() == Path(acfg["live"]["event_log"]).resolve()
        if same_log and live.summary["event_log_lines"] != int(manifest.get("n_input_rows", -1)):
            notes.append(f"the event log has {live.summary['event_log_lines']:,} lines now but the prepared data was "
                         f"made from {manifest.get('n_input_rows')}: re-run python -m features.prepare data={name} "
                         f"so that both sections count the same events")

    top_paths = int(acfg["top_paths"])
    summary: dict[str, Any] = {
        "data": name,
        "n_events": int(len(ev)),
        "n_users": int(ev["user_id"].nunique()),
        "time_range": manifest.get("time_range"),
        "time_kind": manifest.get("time_kind"),
        "day_timezone": tz,
        "steps": {s: list(t) for s, t in acfg["steps"].items()},
        "reconciliation": {"events": int(len(ev)), "manifest_events": int(manifest["n_events"]),
                           "events_per_step": counts, "sum_of_steps": int(sum(counts.values())),
                           "breakdowns_checked": ["overall users", "overall pairs", "day", "category"]
                           + (["segment"] if by_seg is not None else []), "ok": True},
        "funnel_users": _row(users),
        "funnel_pairs": _row(pairs),
        "cart_abandonment": abandonment,
        "view_to_purchase_hours": fn.describe_hours(v2p),
        "repeat_purchase": {**repeat, "first_to_second_purchase_hours": fn.describe_hours(repeat_gap),
                            "buyers_by_occasions": {("10+" if k >= 10 else str(k)): int(v)
                                                    for k, v in occasions_dist.items()}},
        "top_paths_before_purchase": _records(paths.head(top_paths)),
        "n_checkouts": int(paths["checkouts"].sum()),
        "days": int(len(by_day)),
        "categories": int(len(by_cat)),
        "segments": (_records(by_seg[["segment", "units", "viewed", "carted_after_view", "purchased_after_cart",
                                      "with_purchase", "view_to_cart", "cart_to_purchase"]]) if by_seg is not None else None),
        "segment_column": str(acfg["segment_column"]) if by_seg is not None else None,
        "live": live.summary if live is not None else None,
        "notes": notes,
    }

    from features.analytics.report import write_report   # matplotlib only once there is something to plot

    out_dir = Path(acfg["out_dir"])
    with atomic_dir(out_dir) as tmp:
        files = ["summary.json", "funnel_by_day.csv", "funnel_by_category.csv", "paths.csv"]
        by_day.to_csv(tmp / "funnel_by_day.csv", index=False)
        by_cat.to_csv(tmp / "funnel_by_category.csv", index=False)
        paths.to_csv(tmp / "paths.csv", index=False)
        if by_seg is not None:
            by_seg.to_csv(tmp / "funnel_by_segment.csv", index=False)
            files.append("funnel_by_segment.csv")
        if live is not None:
            live.by_variant.to_csv(tmp / "live_by_variant.csv", index=False)
            files.append("live_by_variant.csv")
        files += write_report(tmp, summary, users, pairs, by_day, by_cat, by_seg, v2p, repeat_gap, occasions_dist,
                              paths.head(top_paths), live, int(acfg["report"]["dpi"]))
        seconds = round(time.perf_counter() - started, 2)
        summary["seconds"] = seconds
        summary["cpu_seconds"] = round(time.process_time() - cpu0, 2)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "manifest.json", {
            "kind": "behaviour_analytics", "data": name, "processed_dir": str(src),
            "inputs": {f: file_sha256(src / f) for f in ("events.parquet", "items.parquet")},
            "config": acfg, "files": sorted(files), "n_events": int(len(ev)), "seconds": seconds,
            "code_version": code_version(), "device": "cpu"})
    log.info("analytics of %s: %d events in %.1fs -> %s", name, len(ev), seconds, out_dir)
    return AnalyticsResult(out_dir, summary, seconds)
