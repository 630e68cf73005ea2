"""The drift report: ``python -m serving.drift`` (a table, an HTML page with plots, last-line JSON).

    python -m serving.drift [--bundle NAME|FOLDER] [--events artifacts/serve/events.csv] [--window hourly|daily]
    python -m serving.drift --processed artifacts/processed/online_retail --from 2011-10-07 --window daily
    python -m serving.drift reference --bundle NAME --processed artifacts/processed/online_retail

The first form replays the service's event log (default) or prepared data (``--processed``: events keyed like
the bundle, ``--from``/``--to`` restrict the period) against the bundle's reference (``--bundle``, default
``LATEST``) in the windows of ``conf/drift.yaml``, prints the breaching windows and the alerts, and writes
``artifacts/reports/drift/<bundle>-<window>-<time>/index.html`` (one plot per figure over time, with its line)
plus ``manifest.json``. ``--training-period`` replays the bundle's own training period (a self-check: no
alert expected) with histories starting empty. ``reference`` publishes a derived version of an older bundle that
carries ``drift_reference.json``, computed from the train part of the split the bundle's ``trained_on``
names (bundles from ``training.export`` carry it already).
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.artifacts import atomic_dir, write_json
from features.cli import run_or_exit
from serving.bundle import publish_derived, read_manifest, resolve_bundle_dir
from serving.drift.monitor import Monitor, WindowSpec, alerts, load_config
from serving.drift.reference import REFERENCE, build_reference


def keyed_events(processed: str | Path, part: str | None = None, split: str = "temporal") -> pd.DataFrame:
    """Prepared events (all, or ``part`` of ``split``) with ``user_key``, ``item_key``, ``event``, ``ts``."""
    from features.processed import load_events, load_items, load_split, load_users

    cols = ["user_id", "item_id", "event", "ts"]
    ev = load_events(processed, columns=cols) if part is None else load_split(processed, split, part, columns=cols)
    users = load_users(processed)[["user_id", "user_key"]]
    items = load_items(processed)[["item_id", "item_key"]]
    return ev.merge(users, on="user_id").merge(items, on="item_id")[["user_key", "item_key", "event", "ts"]]


def log_events(path: str | Path) -> pd.DataFrame:
    """The service's event log (CSV with ``user_key``, ``item_key``, ``event``, ``ts``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no event log (pass --events or --processed)")
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["user_key", "item_key", "event", "ts"])


def publish_reference(bundle_dir: Path, processed: str | Path) -> Path:
    """A derived version of ``bundle_dir`` with ``drift_reference.json`` from its training part."""
    from features.splits import split_files

    m = read_manifest(bundle_dir, validate=False)
    trained = m.get("trained_on") or {}
    split = split_files(str(trained.get("split") or "temporal"))
    train = keyed_events(processed, "train", split)
    return publish_derived(bundle_dir, write=lambda d: (d / REFERENCE).write_text(
        json.dumps(build_reference(bundle_dir, train)) + "\n"), latest=False,
        manifest_updates={"drift_reference": {"source": f"{Path(processed).name} {split}/train", "events": len(train)}})


def _plots(windows: list[dict[str, Any]], monitor: Monitor, spec: WindowSpec) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [w for w in windows if "skipped" not in w]
    if not ok:
        return []
    t = pd.to_datetime([w["end"] for w in ok], unit="s", utc=True)
    out = []
    names = [*monitor.ref["features"], "score"]
    for name in names:
        if name == "score":
            y = np.array([w.get("score", {}).get("ks", np.nan) for w in ok])
            label = "KS"
        else:
            y = np.array([w["features"][name]["psi"] for w in ok])
            label = "PSI"
        fig, ax = plt.subplots(figsize=(9, 2.6))
        ax.plot(t, y, lw=0.8)
        ax.axhline(monitor.threshold(name, spec), color="r", ls="--", lw=0.8, label="breach line")
        ax.set_ylabel(label)
        ax.set_title(f"{name}: {label} per {spec.name} window")
        ax.legend(loc="upper left")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        out.append((name, base64.b64encode(buf.getvalue()).decode()))
    return out


def _fmt(ts: int) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")


def render_table(windows: list[dict[str, Any]], monitor: Monitor, spec: WindowSpec, last: int = 15) -> list[str]:
    names = list(monitor.ref["features"])
    head = f"{'window end (UTC)':<17} {'events':>7} " + " ".join(f"{n[:15]:>15}" for n in names) + f" {'score KS':>9}  breaches"
    lines = [head, "-" * len(head)]
    shown = [w for w in windows if "skipped" not in w]
    for w in shown[-last:]:
        ks = w.get("score", {}).get("ks")
        lines.append(f"{_fmt(w['end']):<17} {w['n']:>7} " + " ".join(f"{w['features'][n]['psi']:>15.3f}" for n in names)
                     + f" {'-' if ks is None else f'{ks:.3f}':>9}  {','.join(w['breaches']) or '-'}")
    lines.append("lines: " + ", ".join(f"{n} {monitor.threshold(n, spec):.3f}" for n in [*names, "score"]))
    return lines


def write_html(out_root: Path, name: str, summary: dict[str, Any], table: list[str],
               plots: list[tuple[str, str]]) -> Path:
    final = out_root / name
    with atomic_dir(final) as tmp:
        imgs = "\n".join(f"<h3>{n}</h3><img src='data:image/png;base64,{b}'>" for n, b in plots)
        (tmp / "index.html").write_text(
            "<!doctype html><meta charset='utf-8'><title>drift report</title>"
            "<h1>Drift report</h1><pre>" + json.dumps(summary, indent=2) + "</pre><pre>"
            + "\n".join(table) + "</pre>" + imgs)
        write_json(tmp / "manifest.json", {"kind": "drift_report", **summary})
    return final / "index.html"


def run_report(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config)
    bundles = Path(args.bundles)
    bundle_dir = resolve_bundle_dir(args.bundle, bundles)
    monitor = Monitor(bundle_dir, cfg)
    if args.window not in cfg.windows:
        raise ValueError(f"--window={args.window!r}: not one of {sorted(cfg.windows)} (conf/drift.yaml)")
    spec = cfg.windows[args.window]
    period = monitor.ref.get("period") or [None, None]
    if args.processed:
        events = keyed_events(args.processed)
    else:
        events = log_events(args.events)
    events["ts"] = pd.to_datetime(events["ts"], utc=True, format="mixed")
    lo = pd.Timestamp(args.since, tz="UTC") if args.since else None
    hi = pd.Timestamp(args.until, tz="UTC") if args.until else None
    if args.training_period:
        lo, hi = pd.Timestamp(period[0]), pd.Timestamp(period[1])
    if lo is not None:
        events = events[events["ts"] >= lo]
    if hi is not None:
        events = events[events["ts"] <= hi]
    p = monitor.prepare(events, with_prefix=not args.training_period)
    windows = monitor.evaluate(p, spec)
    fired = alerts(windows, spec.for_windows)
    table = render_table(windows, monitor, spec)
    evaluated = [w for w in windows if "skipped" not in w]
    summary = {"bundle": bundle_dir.name, "window": spec.name, "events": int(len(p)),
               "windows": len(evaluated), "skipped": len(windows) - len(evaluated),
               "breaching_windows": sum(1 for w in evaluated if w["breaches"]),
               "alerts": len(fired), "first_alert": _fmt(fired[0]["at"]) if fired else None,
               "first_alert_features": fired[0]["features"] if fired else None,
               "reference_period": period}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    html = write_html(Path(args.out), f"{bundle_dir.name}-{spec.name}-{stamp}", summary, table,
                      _plots(windows, monitor, spec))
    print("\n".join(table))
    for a in fired:
        print(f"ALERT at {_fmt(a['at'])} (breaching since {_fmt(a['first'])}): {', '.join(a['features'])}")
    print(f"report: {html}")
    return {**summary, "html": str(html)}


def main(argv: list[str] | None = None) -> int:
    art = Path(os.environ.get("SHOPREC_ARTIFACTS", "artifacts"))
    ap = argparse.ArgumentParser(prog="python -m serving.drift", description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="report", choices=["report", "reference"])
    ap.add_argument("--bundle", default=None, help="version name or folder (default: LATEST)")
    ap.add_argument("--bundles", default=str(art / "bundles"))
    ap.add_argument("--events", default=str(art / "serve" / "events.csv"), help="the service's event log")
    ap.add_argument("--processed", default=None, help="prepared data to replay instead of the event log")
    ap.add_argument("--from", dest="since", default=None)
    ap.add_argument("--to", dest="until", default=None)
    ap.add_argument("--training-period", action="store_true", help="replay the reference's own period")
    ap.add_argument("--window", default="daily")
    ap.add_argument("--config", default=None, help="default conf/drift.yaml")
    ap.add_argument("--out", default=str(art / "reports" / "drift"))
    args = ap.parse_args(argv)
    if args.command == "reference":
        if not args.processed:
            print("serving.drift: error: reference needs --processed (the bundle's prepared data)", file=sys.stderr)
            return 2
        bdir = run_or_exit("serving.drift", resolve_bundle_dir, args.bundle, args.bundles)
        new = run_or_exit("serving.drift", publish_reference, bdir, args.processed)
        print(f"published {new} (drift_reference.json); serve it with `python -m serving.bundles promote {new.name}`")
        print(json.dumps({"bundle": new.name, "parent": bdir.name}))
        return 0
    summary = run_or_exit("serving.drift", run_report, args)
    print(json.dumps(summary))
    return 0
