"""Statistics of controlled comparisons: the one module for campaign and experiment readouts.

Everything here is a pure function of counts, moments or arrays (no I/O), checked against
scipy/statsmodels in ``tests/serving/test_stats.py``. Conventions: ``alpha`` is two-sided, intervals
are ``(low, high)`` at level ``1 - alpha``, and a comparison is always *treatment minus control*
(``x1``/``a`` is the treatment, ``x2``/``b`` the control, as in statsmodels' ``count1, nobs1,
count2, nobs2``).

- Proportions: ``wilson_interval`` (one rate), ``newcombe_interval`` (a difference of two rates,
  Newcombe's hybrid score interval, statsmodels ``method="newcomb"``), ``two_proportion_test``
  (pooled z-test, statsmodels ``proportions_ztest``).
- Means: ``MeanStats`` (n, mean, variance; from an array or running sums), ``mean_interval`` (t),
  ``welch_test`` (difference of means, Welch-Satterthwaite degrees of freedom, scipy
  ``ttest_ind(equal_var=False)``).
- ``relative_lift``: ``mean_a / mean_b - 1`` with its interval by the delta method (first-order
  variance of a ratio of two independent means, normal quantile).
- Ratio metrics (clicks per exposure over users): ``ratio_stats`` (delta-method standard error with
  the user as the unit) and ``ratio_comparison`` (difference, z p-value, relative lift).
- ``srm_test``: sample-ratio mismatch, chi-square goodness of fit of the observed counts per variant
  against the configured weights (scipy ``chisquare``). ``SRM_ALPHA`` (0.001) is the flagging level.
- ``cuped_theta`` / ``cuped_adjust``: CUPED (Deng et al. 2013). ``theta = cov(y, x) / var(x)`` from a
  pre-period covariate ``x`` pooled over all variants (so it does not depend on the assignment),
  ``y' = y - theta * (x - mean(x))``; the variance shrinks by ``corr(x, y)**2``.
- Power: ``sample_size_proportions`` (Cohen's h, normal approximation: statsmodels
  ``NormalIndPower`` on ``proportion_effectsize``) and ``sample_size_means`` (standardised effect,
  same solver), ``power_proportions`` for a given size.
- Peeking. A readout uses a *fixed horizon*: the p-value and interval are valid once, at the planned
  sample size (from the minimum detectable effect) or at the end date; a readout taken before that
  says so (``horizon_warning``). For watching an experiment while it runs, ``msprt_p_value`` gives an
  *always-valid* p-value (mixture sequential probability ratio test, Johari et al. 2017, normal
  mixture with variance ``tau**2`` over the effect): the probability that it ever drops below alpha
  under the null is at most alpha, however often it is read. It is less powerful than the fixed
  horizon test at the horizon, so the decision is taken on the fixed horizon p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as _st

SRM_ALPHA = 0.001


def z_value(alpha: float) -> float:
    """The normal quantile of a two-sided interval at level ``1 - alpha`` (1.96 for 0.05)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(_st.norm.isf(alpha / 2))


def _check_count(x: float, n: float, name: str = "successes") -> None:
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"{name}={x!r} must lie in [0, n={n!r}]")


# ----------------------------------------------------------------------------------------- proportions
def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when ``n == 0``."""
    _check_count(successes, n)
    if n == 0:
        return 0.0, 1.0
    z = z_value(alpha)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``x1/n1 - x2/n2`` (from the two Wilson intervals)."""
    _check_count(x1, n1, "x1")
    _check_count(x2, n2, "x2")
    if n1 == 0 or n2 == 0:
        return -1.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, alpha)
    l2, u2 = wilson_interval(x2, n2, alpha)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def two_proportion_test(x1: float, n1: float, x2: float, n2: float) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test of ``p1 == p2``; (0, 1) without variance."""
    _check_count(x1, n1, "x1")
    _check_count(x2, n2, "x2")
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, float(2 * _st.norm.sf(abs(z)))


# ----------------------------------------------------------------------------------------- means
@dataclass(frozen=True)
class MeanStats:
    """Sample size, mean and unbiased variance (ddof=1) of one group."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> "MeanStats":
        a = np.asarray(values, dtype=np.float64).ravel()
        n = int(a.size)
        if n == 0:
            return cls(0, math.nan, math.nan)
        return cls(n, float(a.mean()), float(a.var(ddof=1)) if n > 1 else 0.0)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> "MeanStats":
        """From running sums (count, sum of values, sum of squares)."""
        if n == 0:
            return cls(0, math.nan, math.nan)
        mean = total / n
        var = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(int(n), float(mean), float(var))

    @property
    def se(self) -> float:
        return math.sqrt(self.var / self.n) if self.n > 0 else math.nan


def mean_interval(s: MeanStats, alpha: float = 0.05) -> tuple[float, float]:
    """Student-t interval of a mean (the mean itself when n < 2 or the variance is zero)."""
    if s.n < 2 or s.var == 0:
        return s.mean, s.mean
    t = float(_st.t.isf(alpha / 2, s.n - 1))
    return s.mean - t * s.se, s.mean + t * s.se


@dataclass(frozen=True)
class WelchResult:
    diff: float                 # mean_a - mean_b
    se: float
    df: float
    t: float
    p_value: float
    ci: tuple[float, float]


def welch_test(a: MeanStats, b: MeanStats, alpha: float = 0.05) -> WelchResult:
    """Welch's t-test and interval of ``a.mean - b.mean`` (unequal variances)."""
    if a.n < 2 or b.n < 2:
        return WelchResult(a.mean - b.mean if a.n and b.n else math.nan, math.nan, math.nan, math.nan, math.nan,
                           (math.nan, math.nan))
    va, vb = a.var / a.n, b.var / b.n
    diff = a.mean - b.mean
    se = math.sqrt(va + vb)
    if se == 0:
        return WelchResult(diff, 0.0, math.inf, 0.0 if diff == 0 else math.copysign(math.inf, diff),
                           1.0 if diff == 0 else 0.0, (diff, diff))
    df = (va + vb) ** 2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    t = diff / se
    p = float(2 * _st.t.sf(abs(t), df))
    q = float(_st.t.isf(alpha / 2, df))
    return WelchResult(diff, se, df, t, p, (diff - q * se, diff + q * se))


@dataclass(frozen=True)
class Lift:
    lift: float                 # mean_a / mean_b - 1
    se: float
    ci: tuple[float, float]


def relative_lift(a: MeanStats, b: MeanStats, alpha: float = 0.05) -> Lift:
    """``a.mean / b.mean - 1`` with a delta-method interval (NaN when the control mean is 0)."""
    if a.n == 0 or b.n == 0 or not b.mean or math.isnan(b.mean):
        return Lift(math.nan, math.nan, (math.nan, math.nan))
    r = a.mean / b.mean
    var = a.var / (a.n * b.mean ** 2) + (a.mean ** 2) * b.var / (b.n * b.mean ** 4)
    se = math.sqrt(max(var, 0.0))
    z = z_value(alpha)
    return Lift(r - 1.0, se, (r - 1.0 - z * se, r - 1.0 + z * se))


# ----------------------------------------------------------------------------------------- SRM
def srm_test(observed: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """(chi-square, p) of the observed counts per variant against the expected shares ``weights``."""
    obs = np.asarray(observed, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if obs.shape != w.shape or obs.size < 2:
        raise ValueError(f"observed {obs.shape} and weights {w.shape} must be two or more matching counts")
    if np.any(w <= 0):
        raise ValueError(f"weights must be positive, got {w.tolist()}")
    total = obs.sum()
    if total == 0:
        return 0.0, 1.0
    res = _st.chisquare(obs, f_exp=total * w / w.sum())
    return float(res.statistic), float(res.pvalue)


# ----------------------------------------------------------------------------------------- CUPED
def cuped_theta(y: np.ndarray, x: np.ndarray) -> float:
    """``cov(y, x) / var(x)``: 0 when the covariate does not vary."""
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64)
    if y.shape != x.shape:
        raise ValueError(f"y {y.shape} and x {x.shape} must have the same shape")
    if y.size < 2:
        return 0.0
    vx = float(np.var(x, ddof=1))
    if vx == 0:
        return 0.0
    return float(np.cov(y, x, ddof=1)[0, 1] / vx)


def cuped_adjust(y: np.ndarray, x: np.ndarray, theta: float, x_mean: float) -> np.ndarray:
    """``y - theta * (x - x_mean)``: the same mean in expectation, less variance."""
    return np.asarray(y, np.float64) - theta * (np.asarray(x, np.float64) - x_mean)


# ----------------------------------------------------------------------------------------- power
def _n_for(effect_size: float, alpha: float, power: float) -> float:
    """``((z_{1-alpha/2} + z_power) / effect_size)**2``: one group's size for a unit-variance effect."""
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
    if effect_size == 0:
        return math.inf
    return ((z_value(alpha) + float(_st.norm.isf(1 - power))) / abs(effect_size)) ** 2


def cohens_h(p1: float, p2: float) -> float:
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2))


def sample_size_proportions(p_base: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                            relative: bool = True) -> int:
    """Users per variant (two equal groups) to detect ``p_base -> p_base * (1 + mde)`` (or ``+ mde``
    when ``relative=False``) with a two-sided test at ``alpha`` and the given power."""
    if not 0.0 < p_base < 1.0:
        raise ValueError(f"p_base must lie in (0, 1), got {p_base!r}")
    p2 = p_base * (1 + mde) if relative else p_base + mde
    if not 0.0 < p2 < 1.0:
        raise ValueError(f"the treated rate {p2!r} (p_base={p_base}, mde={mde}) must lie in (0, 1)")
    return math.ceil(2 * _n_for(cohens_h(p2, p_base), alpha, power))


def sample_size_means(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per variant to detect an absolute difference ``mde`` of means with standard deviation ``sd``."""
    if sd <= 0:
        raise ValueError(f"sd must be positive, got {sd!r}")
    return math.ceil(2 * _n_for(mde / sd, alpha, power))


def power_proportions(p_base: float, p_treat: float, n_per_variant: float, alpha: float = 0.05) -> float:
    """Power of the two-sided test at ``alpha`` with ``n_per_variant`` users in each of two groups."""
    h = abs(cohens_h(p_treat, p_base))
    shift = h * math.sqrt(n_per_variant / 2)
    z = z_value(alpha)
    return float(_st.norm.sf(z - shift) + _st.norm.cdf(-z - shift))


# ----------------------------------------------------------------------------------------- peeking
def msprt_p_value(diff: float, var_diff: float, tau2: float) -> float:
    """Always-valid p-value of ``diff == 0`` at one look (normal mixture SPRT).

    ``var_diff`` is the variance of the estimated difference (``se**2``), ``tau2`` the mixing
    variance over the true effect (on the scale of ``diff``; about the squared minimum detectable
    effect). Take the running minimum over successive looks: ``min(p_1, ..., p_t)`` stays valid.
    """
    if not (var_diff > 0 and tau2 > 0) or math.isnan(diff):
        return 1.0
    log_lr = 0.5 * math.log(var_diff / (var_diff + tau2)) + tau2 * diff * diff / (2 * var_diff * (var_diff + tau2))
    return float(min(1.0, math.exp(-log_lr)))


def horizon_warning(n_per_variant: Sequence[int], planned_n: int | None, *, ended: bool) -> str | None:
    """A sentence when a fixed-horizon readout is taken early (None when it is at or past its horizon)."""
    n_min = min(n_per_variant) if len(n_per_variant) else 0
    if ended or (planned_n is not None and n_min >= planned_n):
        return None
    need = f"{planned_n} users per variant" if planned_n is not None else "the end date"
    return (f"read early: {n_min} users in the smallest variant, planned {need}; the fixed-horizon p-value "
            f"and interval are not valid yet (use the always-valid p-value to watch)")


# ----------------------------------------------------------------------------------------- ratio metrics
@dataclass(frozen=True)
class RatioStats:
    """A ratio of sums over units (e.g. clicks / exposures per user), with its delta-method standard error."""

    n: int
    ratio: float
    se: float


def ratio_stats(numerator: np.ndarray, denominator: np.ndarray) -> RatioStats:
    """``sum(num) / sum(den)`` over ``n`` independent units; the variance treats each unit as one draw
    of the pair (so repeated exposures of one user are not counted as independent)."""
    x = np.asarray(numerator, np.float64)
    y = np.asarray(denominator, np.float64)
    n = int(x.size)
    if n == 0 or y.sum() == 0:
        return RatioStats(n, math.nan, math.nan)
    mx, my = x.mean(), y.mean()
    r = mx / my
    if n < 2:
        return RatioStats(n, float(r), math.nan)
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = float(np.cov(x, y, ddof=1)[0, 1])
    var = (vx - 2 * r * cxy + r * r * vy) / (n * my * my)
    return RatioStats(n, float(r), math.sqrt(max(var, 0.0)))


def ratio_comparison(a: RatioStats, b: RatioStats, alpha: float = 0.05) -> tuple[float, tuple[float, float], float,
                                                                                    Lift]:
    """(difference a - b, its interval, two-sided z p-value, relative lift a/b - 1 with delta-method interval)."""
    z = z_value(alpha)
    diff = a.ratio - b.ratio
    se = math.sqrt(a.se ** 2 + b.se ** 2) if not (math.isnan(a.se) or math.isnan(b.se)) else math.nan
    if math.isnan(se) or se == 0:
        p = 1.0 if diff == 0 else math.nan
        ci = (diff, diff) if se == 0 else (math.nan, math.nan)
    else:
        p = float(2 * _st.norm.sf(abs(diff) / se))
        ci = (diff - z * se, diff + z * se)
    if not b.ratio or math.isnan(b.ratio) or math.isnan(se):
        lift = Lift(math.nan, math.nan, (math.nan, math.nan))
    else:
        lse = math.sqrt(a.se ** 2 / b.ratio ** 2 + a.ratio ** 2 * b.se ** 2 / b.ratio ** 4)
        lv = a.ratio / b.ratio - 1
        lift = Lift(lv, lse, (lv - z * lse, lv + z * lse))
    return diff, ci, p, lift
