"""Drift gauges of a running service, on ``GET /metrics``: live events against the serving bundle's reference.

``attach_drift(service)`` registers a Prometheus collector in the service's registry. On a scrape (at most every
``service.refresh_s`` seconds of ``conf/drift.yaml``, at once while the window holds fewer than ``min_events``
events; in between the last figures are served again) it reads the
new lines of the event log (``serve.store.event_log``: the file store's log, or the one
``serving.drain_events`` fills from Redis), keeps the last ``span_s`` of events and computes the figures of
``serving.drift.monitor`` against the bundle being served (its ``drift_reference.json``). Nothing runs on the
request path. Histories for the score are the bundle's plus the window's events (older live events are not
re-read).

Gauges (labels carry no user data): ``shoprec_drift_psi{feature}``, ``shoprec_drift_js{feature}``,
``shoprec_drift_ks{feature="score"}``, ``shoprec_drift_line{feature}`` (the breach line),
``shoprec_drift_window_events``, ``shoprec_drift_reference`` (1 when the bundle has a reference). The alert
rules are ``conf/prometheus/drift_rules.yaml``.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from serving.drift.monitor import DriftConfig, Monitor, load_config
from serving.drift.reference import REFERENCE

log = logging.getLogger(__name__)


class LogTail:
    """The new complete lines of a CSV event log since the last call (a shorter file starts over)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.header: list[str] | None = None

    def read(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame()
        size = self.path.stat().st_size
        if size < self.offset:
            self.offset, self.header = 0, None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return pd.DataFrame()
        self.offset += end + 1
        text = data[:end + 1].decode("utf-8", errors="replace")
        if self.header is None:
            first, _, text = text.partition("\n")
            self.header = first.strip().split(",")
        if not text.strip():
            return pd.DataFrame(columns=self.header)
        return pd.read_csv(io.StringIO(text), names=self.header, dtype=str, keep_default_na=False)


class DriftCollector:
    """A ``prometheus_client`` collector over a ``Service``."""

    def __init__(self, service: Any, cfg: DriftConfig | None = None):
        self.service = service
        self.cfg = cfg or load_config()
        self.window = self.cfg.windows.get(self.cfg.service_window) or next(iter(self.cfg.windows.values()))
        self.refresh_s = self.cfg.refresh_s
        self.tail = LogTail(service.cfg.store.event_log)
        self.events = pd.DataFrame(columns=["user_key", "item_key", "event", "ts"])
        self._monitor: Monitor | None = None
        self._figures: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def _monitor_for(self, bundle_dir: Path) -> Monitor | None:
        if self._monitor is None or self._monitor.bundle_dir != bundle_dir:
            self._monitor = Monitor(bundle_dir, self.cfg) if (bundle_dir / REFERENCE).exists() else None
        return self._monitor

    def refresh(self, now: float | None = None) -> dict[str, Any] | None:
        """Read new events and recompute the figures (the collector calls it, throttled)."""
        bundle = self.service.bundle
        if bundle is None:
            return None
        monitor = self._monitor_for(Path(bundle.path))
        new = self.tail.read()
        if len(new):
            new = new[[c for c in ("user_key", "item_key", "event", "ts") if c in new.columns]]
            self.events = pd.concat([self.events, new], ignore_index=True)
        now = time.time() if now is None else now
        if len(self.events):
            ts = pd.to_datetime(self.events["ts"], utc=True, format="mixed", errors="coerce")
            self.events = self.events[ts >= pd.Timestamp(now - self.window.span_s, unit="s", tz="UTC")]
        if monitor is None:
            return {"reference": False, "n": int(len(self.events))}
        p = monitor.prepare(self.events)
        figs = monitor.figures(p, 0, len(p), self.window)
        figs["lines"] = {name: monitor.threshold(name, self.window) for name in [*monitor.ref["features"], "score"]}
        figs["reference"] = True
        return figs

    def describe(self) -> list[Any]:
        """The metric names without values: without it ``registry.register`` would call ``collect`` (and read the
        log) at start."""
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(f"shoprec_drift_{n}", n) for n in ("reference", "window_events", "psi", "js", "ks",
                                                                     "line")]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            figs = self._figures
            small = figs is None or figs.get("n", 0) < self.cfg.thresholds.min_events  # cheap: recompute at once
            if small or time.monotonic() - self._at >= self.refresh_s:
                try:
                    self._figures = self.refresh()
                except Exception as e:  # noqa: BLE001 - a scrape never fails because of drift figures
                    log.error("drift figures not computed: %s", e)
                self._at = time.monotonic()
            figs = self._figures
        if figs is None:
            return
        ref = GaugeMetricFamily("shoprec_drift_reference", "1 when the serving bundle has a drift reference")
        ref.add_metric([], 1.0 if figs.get("reference") else 0.0)
        yield ref
        n = GaugeMetricFamily("shoprec_drift_window_events", "events in the drift window (last span_s)")
        n.add_metric([], float(figs.get("n", 0)))
        yield n
        if not figs.get("reference") or "skipped" in figs:
            return
        for stat in ("psi", "js"):
            g = GaugeMetricFamily(f"shoprec_drift_{stat}", f"{stat.upper()} of the window against the reference",
                                  labels=["feature"])
            for name, f in figs["features"].items():
                g.add_metric([name], f[stat])
            yield g
        if "score" in figs:
            g = GaugeMetricFamily("shoprec_drift_ks", "KS of the top-1 score against the reference", labels=["feature"])
            g.add_metric(["score"], figs["score"]["ks"])
            yield g
        g = GaugeMetricFamily("shoprec_drift_line", "breach line of each drift figure", labels=["feature"])
        for name, v in figs["lines"].items():
            g.add_metric([name], v)
        yield g


def attach_drift(service: Any) -> DriftCollector | None:
    """Register the drift collector in ``service.telemetry.registry`` (a failure is logged, never raised)."""
    try:
        collector = DriftCollector(service)
        service.telemetry.registry.register(collector)
        return collector
    except Exception as e:  # noqa: BLE001 - drift gauges are optional for serving
        log.error("drift gauges not attached: %s", e)
        return None
