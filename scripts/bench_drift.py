"""Drift detection on a real replay: time to alert after the training period ends, false alerts inside it.

    python scripts/bench_drift.py [--processed artifacts/processed/online_retail] [--bundle NAME|FOLDER]

The bundle (default ``LATEST``) must have been trained on the earlier part of the prepared data (its manifest's
``trained_on.period``; the demo's Online Retail bundle is trained on the temporal train part, up to
2011-10-07). Its reference is its ``drift_reference.json``, or, for an older bundle, computed here from that
train part (nothing is written into the bundle). For each window of ``conf/drift.yaml`` (hourly: every hour
over the last 24 h; daily: each day) the script replays

- the training period itself (histories start empty): every alert there is a false alert (0 expected);
- the later months (histories continue from the bundle's): the drifted stream; it reports the first alert,
  the time from the first drifted window (the first window ending after the training period) to the alert,
  and the share of evaluated windows that breach.

Prints a table and, as the last line, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from features.splits import split_files
from serving.bundle import read_manifest, resolve_bundle_dir
from serving.drift.monitor import Monitor, alerts, load_config
from serving.drift.reference import REFERENCE, build_reference
from serving.drift.report import keyed_events


def main() -> None:
    art = Path(os.environ.get("SHOPREC_ARTIFACTS", "artifacts"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processed", default=str(art / "processed" / "online_retail"))
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--bundles", default=str(art / "bundles"))
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    bdir = resolve_bundle_dir(args.bundle, args.bundles)
    m = read_manifest(bdir, validate=False)
    trained = m.get("trained_on") or {}
    if not trained.get("period"):
        raise SystemExit(f"{bdir}: manifest has no trained_on.period (export the bundle with training.export)")
    start, end = (pd.Timestamp(x) for x in trained["period"])
    cfg = load_config(args.config)
    ref = None
    if not (bdir / REFERENCE).exists():
        split = split_files(str(trained.get("split") or "temporal"))
        ref = build_reference(bdir, keyed_events(args.processed, "train", split))
    monitor = Monitor(bdir, cfg, ref=ref)
    events = keyed_events(args.processed)
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    train_ev = events[(events["ts"] >= start) & (events["ts"] <= end)]
    later_ev = events[events["ts"] > end]
    p_train = monitor.prepare(train_ev, with_prefix=False)
    p_later = monitor.prepare(later_ev, with_prefix=True)
    cut = int(end.timestamp())
    rows = []
    for name, spec in cfg.windows.items():
        w_train = monitor.evaluate(p_train, spec)
        w_later = monitor.evaluate(p_later, spec, start=cut + spec.step_s)
        false_alerts = alerts(w_train, spec.for_windows)
        fired = alerts(w_later, spec.for_windows)
        ev_train = [w for w in w_train if "skipped" not in w]
        ev_later = [w for w in w_later if "skipped" not in w]
        first_window = ev_later[0]["end"] if ev_later else None
        row = {"window": name, "step_s": spec.step_s, "span_s": spec.span_s, "for_windows": spec.for_windows,
               "train_windows": len(ev_train), "false_alerts": len(false_alerts),
               "train_breach_share": round(sum(1 for w in ev_train if w["breaches"]) / max(len(ev_train), 1), 4),
               "later_windows": len(ev_later),
               "later_breach_share": round(sum(1 for w in ev_later if w["breaches"]) / max(len(ev_later), 1), 4),
               "alerted": bool(fired),
               "first_alert": str(pd.Timestamp(fired[0]["at"], unit="s", tz="UTC")) if fired else None,
               "alert_features": fired[0]["features"] if fired else None,
               "hours_first_drifted_window_to_alert": round((fired[0]["at"] - first_window) / 3600, 1)
               if fired and first_window else None,
               "hours_training_end_to_alert": round((fired[0]["at"] - cut) / 3600, 1) if fired else None}
        rows.append(row)
    print(f"bundle {bdir.name}: trained on {start} .. {end}; replay of {len(train_ev)} training-period events and "
          f"{len(later_ev)} later events ({later_ev['ts'].min()} .. {later_ev['ts'].max()})")
    print("lines: " + ", ".join(f"{n} {monitor.threshold(n, cfg.windows['daily']):.3f}"
                                for n in [*monitor.ref["features"], "score"]))
    head = (f"{'window':<7} {'for':>4} {'train windows':>13} {'false alerts':>12} {'train breach %':>14} "
            f"{'later windows':>13} {'later breach %':>14} {'first alert (UTC)':>26} {'h to alert':>10}  features")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['window']:<7} {r['for_windows']:>4} {r['train_windows']:>13} {r['false_alerts']:>12} "
              f"{100 * r['train_breach_share']:>13.1f}% {r['later_windows']:>13} {100 * r['later_breach_share']:>13.1f}% "
              f"{str(r['first_alert']):>26} {str(r['hours_first_drifted_window_to_alert']):>10}  "
              f"{','.join(r['alert_features'] or []) or '-'}")
    print(json.dumps({"bench": "drift", "data": Path(args.processed).name, "bundle": bdir.name,
                      "training_period": [str(start), str(end)], "later_events": int(len(later_ev)),
                      "seconds": round(time.perf_counter() - t0, 1), "windows": rows}))


if __name__ == "__main__":
    main()
