"""The distances drift monitoring uses: PSI and Jensen-Shannon between binned distributions, KS against a
reference given by its quantiles.

- ``psi(p, q)``: population stability index ``sum((q - p) * ln(q / p))``; empty bins count as ``EPS`` (so a
  category absent from the reference that appears live weighs heavily). Convention: < 0.1 stable, 0.1-0.25
  moderate, > 0.25 a significant shift.
- ``js(p, q)``: Jensen-Shannon divergence in bits, in [0, 1] (0 = identical, 1 = disjoint supports).
- ``ks_to_quantiles(sample, quantiles)``: the two-sample KS statistic (largest CDF gap) between ``sample`` and a
  reference summarised by equally spaced quantiles (0 %, 1 %, ..., 100 %).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-4


def _norm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    s = x.sum()
    return x / s if s > 0 else np.full(len(x), 1.0 / max(len(x), 1))


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """PSI of ``q`` (live) against ``p`` (reference), both counts or probabilities over the same bins."""
    p, q = np.maximum(_norm(p), EPS), np.maximum(_norm(q), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def js(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) between ``p`` and ``q``."""
    p, q = _norm(p), _norm(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def quantiles(sample: np.ndarray, n: int = 101) -> list[float]:
    """``n`` equally spaced quantiles of ``sample`` (the reference summary ``ks_to_quantiles`` reads)."""
    return [float(v) for v in np.quantile(np.asarray(sample, np.float64), np.linspace(0, 1, n))]


def ks_to_quantiles(sample: np.ndarray, ref_quantiles: list[float]) -> float:
    """KS statistic between ``sample`` and the reference whose CDF passes through ``ref_quantiles`` (linear in
    between); NaN for an empty sample."""
    x = np.sort(np.asarray(sample, np.float64))
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan")
    qs = np.asarray(ref_quantiles, np.float64)
    levels = np.linspace(0, 1, len(qs))
    grid = np.unique(np.concatenate([x, qs]))
    ref_cdf = np.interp(grid, qs, levels, left=0.0, right=1.0)
    live_cdf = np.searchsorted(x, grid, side="right") / len(x)
    live_before = np.searchsorted(x, grid, side="left") / len(x)
    return float(max(np.max(np.abs(live_cdf - ref_cdf)), np.max(np.abs(live_before - ref_cdf))))
