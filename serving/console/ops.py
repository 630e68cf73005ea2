"""The console's operator views: models and bundles, and health.

- ``models_view``: every bundle version (``serving.bundle.versions.list_versions``: created, parent,
  what it adds, its offline figures with the protocol they were measured under), the one ``LATEST``
  names, the one this replica has loaded, the promotion history and the version a rollback would
  serve. ``rollback`` moves ``LATEST`` (``serving.bundle.versions.rollback``, which records and audits
  it) and swaps this replica at once; the others follow within ``serve.watch_interval_s``.
- ``Health``: the service's own Prometheus metrics (``serving.telemetry``), sampled at each call:
  request rate, latency percentiles of the recommendation route (from the histogram buckets, linear
  within a bucket), degraded and cold-start shares, event ingest, bundle swaps; and drift indicators,
  each comparing the last window between two samples with everything since the replica started
  (cold-start share, degraded share), or reading the newest lines of the event log (share of events
  on items the serving bundle does not know, event type mix).
"""
from __future__ import annotations

import collections
import csv
import io
import threading
import time
from pathlib import Path
from typing import Any

from serving.console.marketing import clean

REC_ROUTE = "/v1/recommendations"
EVENTS_ROUTE = "/v1/events"
MAX_SAMPLES = 360           # at one sample per 5 s poll: the last 30 minutes
TAIL_BYTES = 256 * 1024     # the newest events read for the drift indicators
DRIFT_RATIO = 2.0           # an indicator is flagged when the recent share is this many times the overall one
DRIFT_MIN_POINTS = 0.05     # ... and at least this much higher (absolute)


# ------------------------------------------------------------------------------------------------ models
def models_view(service: Any) -> dict[str, Any]:
    from serving.bundle import BundleError
    from serving.bundle import versions as v

    root = Path(str(service.cfg.bundles_dir))
    rows = v.list_versions(root)
    if not rows:
        return {"available": False, "missing": {
            "message": f"no bundle version under {root}",
            "command": "python -m training.synthetic_bundle   # or train and export: python -m training.export run=<run dir>"}}
    try:
        target = v.rollback_target(root)
    except BundleError as e:
        target, why = None, str(e)
    else:
        why = None
    loaded = service.bundle
    return clean({"available": True, "bundles_dir": str(root), "versions": rows[::-1],
                  "serving": next((r["version"] for r in rows if r["serving"]), None),
                  "loaded_here": None if loaded is None else loaded.name,
                  "history": v.history(root)[-20:][::-1], "rollback_target": target, "rollback_blocked": why})


def rollback(service: Any, to: str | None, actor: str) -> dict[str, Any]:
    """Serve ``to`` (None: the version before the current promotion); ``BundleError`` when not possible."""
    from serving.bundle import versions as v

    root = Path(str(service.cfg.bundles_dir))
    record = v.rollback(root, to, actor=actor)
    try:
        service.swap_to(root / record["version"])
    except Exception as e:  # noqa: BLE001 - LATEST moved: the watcher retries; say so
        record["swap_error"] = str(e)
    return record


# ------------------------------------------------------------------------------------------------ health
def _families(registry: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = collections.defaultdict(list)
    for fam in registry.collect():
        out[fam.name].extend(fam.samples)
    return out


def _sum(samples: list[Any], name: str, **labels: str) -> float:
    return float(sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())))


def _buckets(samples: list[Any], route: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the latency histogram of ``route``."""
    out = [(float(s.labels["le"]), float(s.value)) for s in samples
           if s.name == "shoprec_request_seconds_bucket" and s.labels.get("route") == route]
    return sorted(out)


def percentile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile (0-1) from cumulative histogram buckets, linear within the bucket (ms)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    want = q * total
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= want:
            if le == float("inf"):
                return prev_le * 1000.0
            frac = 0.0 if n == prev_n else (want - prev_n) / (n - prev_n)
            return (prev_le + frac * (le - prev_le)) * 1000.0
        prev_le, prev_n = le, n
    return prev_le * 1000.0


def _diff(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(b)
    return [(le, n - before.get(le, 0.0)) for le, n in a]


class Health:
    """Samples of the service's counters (one per call, at most one per ``min_interval_s``)."""

    def __init__(self, service: Any, min_interval_s: float = 1.0):
        self.service = service
        self.min_interval_s = float(min_interval_s)
        self.started = time.time()
        self.samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()
        self.sample()

    def sample(self) -> dict[str, Any]:
        fam = _families(self.service.telemetry.registry)
        req = fam.get("shoprec_requests", [])
        lat = fam.get("shoprec_request_seconds", [])
        s = {
            "t": time.time(),
            "requests": _sum(req, "shoprec_requests_total"),
            "recs": _sum(req, "shoprec_requests_total", route=REC_ROUTE),
            "errors": _sum(fam.get("shoprec_errors", []), "shoprec_errors_total"),
            "events": _sum(fam.get("shoprec_events_accepted", []), "shoprec_events_accepted_total"),
            "degraded": _sum(fam.get("shoprec_degraded", []), "shoprec_degraded_total"),
            "cold_start": _sum(fam.get("shoprec_cold_start", []), "shoprec_cold_start_total"),
            "swaps": _sum(fam.get("shoprec_bundle_swaps", []), "shoprec_bundle_swaps_total"),
            "swap_failures": _sum(fam.get("shoprec_bundle_swap_failures", []), "shoprec_bundle_swap_failures_total"),
            "buckets": _buckets(lat, REC_ROUTE),
        }
        with self._lock:
            if not self.samples or s["t"] - self.samples[-1]["t"] >= self.min_interval_s:
                self.samples.append(s)
            return s

    def view(self) -> dict[str, Any]:
        now = self.sample()
        with self._lock:
            samples = list(self.samples)
        series = []
        for a, b in zip(samples[1:], samples[:-1]):
            dt = max(a["t"] - b["t"], 1e-9)
            win = _diff(a["buckets"], b["buckets"])
            series.append({"t": a["t"], "rps": (a["requests"] - b["requests"]) / dt,
                           "rec_rps": (a["recs"] - b["recs"]) / dt, "events_ps": (a["events"] - b["events"]) / dt,
                           "p50": percentile(win, 0.5), "p95": percentile(win, 0.95), "p99": percentile(win, 0.99)})
        recs = now["recs"]
        last = series[-1] if series else None
        window = (samples[-1], samples[-2]) if len(samples) >= 2 else None
        cold_all = now["cold_start"] / recs if recs else None
        deg_all = now["degraded"] / recs if recs else None
        cold_win = deg_win = None
        if window and window[0]["recs"] > window[1]["recs"]:
            n = window[0]["recs"] - window[1]["recs"]
            cold_win = (window[0]["cold_start"] - window[1]["cold_start"]) / n
            deg_win = (window[0]["degraded"] - window[1]["degraded"]) / n
        bundle = self.service.bundle
        store = self.service.store
        out = {
            "uptime_s": now["t"] - self.started, "bundle": None if bundle is None else bundle.name,
            "ready": bundle is not None, "load_error": self.service.load_error,
            "totals": {"requests": now["requests"], "errors": now["errors"], "recommendations": recs, "events_accepted": now["events"],
                       "degraded": now["degraded"], "cold_start": now["cold_start"], "bundle_swaps": now["swaps"],
                       "bundle_swap_failures": now["swap_failures"],
                       "event_log_events": getattr(store, "n_events", None),
                       "event_log_bad_lines": getattr(store, "n_bad_lines", None)},
            "latency_ms": {"p50": percentile(now["buckets"], 0.5), "p95": percentile(now["buckets"], 0.95),
                           "p99": percentile(now["buckets"], 0.99), "route": REC_ROUTE, "since": "start"},
            "shares": {"degraded": deg_all, "cold_start": cold_all},
            "rate": last, "series": series,
            "drift": self._drift(cold_win, cold_all, deg_win, deg_all),
        }
        return clean(out)

    def _drift(self, cold_win, cold_all, deg_win, deg_all) -> list[dict[str, Any]]:
        rows = [_indicator("cold-start share of recommendations", cold_win, cold_all, "last sample window",
                           "since start"),
                _indicator("degraded share of recommendations", deg_win, deg_all, "last sample window", "since start")]
        tail = self._event_tail()
        bundle = self.service.bundle
        if tail and bundle is not None:
            known = bundle.items.key_to_id
            unknown = sum(1 for r in tail if r["item_key"] not in known) / len(tail)
            rows.append({"name": "events on items the serving bundle does not know", "recent": unknown,
                         "baseline": 0.0, "recent_label": f"newest {len(tail)} events", "baseline_label": "catalogue",
                         "flag": unknown >= DRIFT_MIN_POINTS})
            mix = collections.Counter(r["event"] for r in tail)
            rows.append({"name": "event type mix (newest events)", "mix": {k: n / len(tail) for k, n in mix.items()},
                         "recent_label": f"newest {len(tail)} events", "flag": False})
        return rows

    def _event_tail(self) -> list[dict[str, str]]:
        path = Path(str(self.service.cfg.store.event_log))
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - TAIL_BYTES))
                data = f.read()
        except OSError:
            return []
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if size > TAIL_BYTES:
            lines = lines[1:]  # the first one is cut
        out = []
        for row in csv.reader(io.StringIO("\n".join(x for x in lines[:-1] if x))):  # the last may be torn
            if len(row) >= 3 and row[0] != "user_key":
                out.append({"item_key": row[1], "event": row[2]})
        return out


def _indicator(name: str, recent: float | None, baseline: float | None, rl: str, bl: str) -> dict[str, Any]:
    flag = (recent is not None and baseline is not None and recent >= DRIFT_RATIO * baseline
            and recent - baseline >= DRIFT_MIN_POINTS)
    return {"name": name, "recent": recent, "baseline": baseline, "recent_label": rl, "baseline_label": bl,
            "flag": bool(flag)}
