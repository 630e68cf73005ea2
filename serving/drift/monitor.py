"""Live traffic against a bundle's reference: figures per time window, breaches, alerts.

A window ending at ``t`` holds the events with ``t - span <= ts < t``; windows end every ``step`` seconds
(``conf/drift.yaml``: ``hourly`` = every hour over the last 24 h, ``daily`` = every day over that day). A window
with fewer than ``min_events`` events is skipped (no figure: too few to tell noise from drift). Per window:

- each categorical feature (``serving.drift.reference``): PSI and Jensen-Shannon against the reference; a
  breach when PSI > its line (JS > ``thresholds.js`` is reported as a warning only);
- the score: KS against the reference quantiles, a breach when KS > its line (with at least ``min_scored``
  scored user-days in the window).

A figure's line is ``thresholds.psi`` (``thresholds.ks`` for the score), raised to the reference's own noise
level for that figure (``noise.quantile``: its 99th percentile over one-day windows of the training events, ending every 6 h) when
the window spans one day: the training data alone never crosses it by more than chance.

An alert fires when ``for_windows`` consecutive evaluated windows breach (skipped windows neither count nor
reset), once per episode (a window without a breach ends it): the same rule as the Prometheus alert
``ShoprecDrift`` of ``conf/prometheus/drift_rules.yaml`` over the gauges the service exports.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.artifacts import REPO_ROOT
from serving.drift.reference import BundleView, Prepared, prepare, read_reference, window_stats

CONFIG = REPO_ROOT / "conf" / "drift.yaml"


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.25
    js: float = 0.1
    ks: float = 0.2
    min_events: int = 200
    min_scored: int = 50


@dataclass(frozen=True)
class WindowSpec:
    name: str
    step_s: int
    span_s: int
    for_windows: int


@dataclass(frozen=True)
class DriftConfig:
    thresholds: Thresholds
    windows: dict[str, WindowSpec]
    score_sample: float = 1.0
    service_window: str = "hourly"   # the window the service's gauges cover
    refresh_s: float = 60.0          # the service recomputes its gauges at most this often


def load_config(path: str | Path | None = None) -> DriftConfig:
    """``conf/drift.yaml`` (or ``path``) as a ``DriftConfig``; a missing or wrong key is a ``ValueError``."""
    from omegaconf import OmegaConf

    path = Path(path) if path else CONFIG
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        th = Thresholds(**raw["thresholds"])
        windows = {k: WindowSpec(k, int(v["step_s"]), int(v["span_s"]), int(v["for_windows"]))
                   for k, v in raw["windows"].items()}
        svc = raw.get("service") or {}
        return DriftConfig(th, windows, float(raw.get("score_sample", 1.0)), str(svc.get("window", "hourly")),
                           float(svc.get("refresh_s", 60)))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


class Monitor:
    """A bundle's reference and view: turns events into ``Prepared`` codes and windows into figures."""

    def __init__(self, bundle_dir: str | Path, cfg: DriftConfig | None = None, ref: dict[str, Any] | None = None):
        """``ref``: a reference computed in memory (``build_reference``) instead of the bundle's file."""
        self.bundle_dir = Path(bundle_dir)
        self.ref = ref if ref is not None else read_reference(self.bundle_dir)
        self.view = BundleView(self.bundle_dir)
        self.cfg = cfg or load_config()
        self.buckets = np.asarray(self.ref["item_bucket"], np.int64)
        self.user_bins = {k: f["codes"] for k, f in self.ref["features"].items() if k.startswith("user_feature:")}

    def prepare(self, events: pd.DataFrame, *, with_prefix: bool = True, score_sample: float | None = None,
                seed: int = 0) -> Prepared:
        return prepare(events, self.view, self.buckets, user_bins=dict(self.user_bins),
                       score_sample=self.cfg.score_sample if score_sample is None else score_sample,
                       with_prefix=with_prefix, seed=seed)

    def threshold(self, name: str, window: WindowSpec | None = None) -> float:
        """The breach line of figure ``name``: the configured threshold, raised to the reference's own noise level
        (``noise.quantile``) when the window spans what it was measured on."""
        th = self.cfg.thresholds
        base = th.ks if name == "score" else th.psi
        noise = self.ref.get("noise") or {}
        if window is None or int(noise.get("span_s", -1)) == window.span_s:
            return max(base, float((noise.get("quantile") or {}).get(name, 0.0)))
        return base

    def figures(self, p: Prepared, a: int, b: int, window: WindowSpec | None = None) -> dict[str, Any]:
        """Figures of events ``[a, b)``: ``n``, per feature ``psi``/``js``, ``score`` ``ks``, and ``breaches``."""
        th = self.cfg.thresholds
        out: dict[str, Any] = {"n": int(b - a), "features": {}, "breaches": [], "warnings": []}
        if b - a < th.min_events:
            out["skipped"] = f"{b - a} events < min_events={th.min_events}"
            return out
        out.update(window_stats(self.ref, p, a, b, th.min_scored))
        for name, fig in out["features"].items():
            if fig["psi"] > self.threshold(name, window):
                out["breaches"].append(name)
            elif fig["js"] > th.js:
                out["warnings"].append(name)
        if "score" in out and out["score"]["ks"] > self.threshold("score", window):
            out["breaches"].append("score")
        return out

    def evaluate(self, p: Prepared, window: WindowSpec, start: int | None = None,
                 end: int | None = None) -> list[dict[str, Any]]:
        """Figures of every window ending at ``start + k * step`` (``start`` default: the first event + span) up to
        ``end`` (default: the last event + step), skipped ones included."""
        if len(p) == 0:
            return []
        start = int(p.ts[0]) + window.span_s if start is None else int(start)
        end = int(p.ts[-1]) + window.step_s if end is None else int(end)
        out = []
        for t in range(start, end + 1, window.step_s):
            a, b = p.span(t - window.span_s, t)
            if b - a == 0:
                continue  # nothing happened: not a window at all (nights, closed days)
            out.append({"end": t, **self.figures(p, a, b, window)})
        return out


def alerts(windows: list[dict[str, Any]], for_windows: int) -> list[dict[str, Any]]:
    """The alerts of a sequence of evaluated windows: one per episode of ``for_windows`` consecutive breaching
    windows (skipped windows neither count nor reset). Each: ``at`` (end of the window that fired it),
    ``first`` (end of the first breaching window of the episode), ``features``."""
    out, streak, first, firing = [], 0, None, False
    for w in windows:
        if "skipped" in w:
            continue
        if w["breaches"]:
            streak += 1
            first = w["end"] if streak == 1 else first
            if streak >= for_windows and not firing:
                out.append({"at": w["end"], "first": first, "features": sorted(set(w["breaches"]))})
                firing = True
        else:
            streak, first, firing = 0, None, False
    return out
