"""serving.stats against scipy/statsmodels on known cases, plus the sequential test's guarantee."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (confint_proportions_2indep, proportion_confint, proportion_effectsize,
                                          proportions_ztest)
from statsmodels.stats.weightstats import DescrStatsW

from serving import stats

CASES = [(0, 10), (1, 10), (5, 10), (10, 10), (37, 1000), (480, 1000), (3, 20000)]


@pytest.mark.parametrize("x,n", CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_statsmodels(x, n, alpha):
    assert stats.wilson_interval(x, n, alpha) == pytest.approx(proportion_confint(x, n, alpha, method="wilson"),
                                                               abs=1e-12)


@pytest.mark.parametrize("x1,n1,x2,n2", [(56, 70, 48, 80), (9, 10, 3, 10), (0, 50, 2, 60), (120, 5000, 95, 5100),
                                         (10, 10, 0, 20)])
def test_newcombe_matches_statsmodels(x1, n1, x2, n2):
    ref = confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff", alpha=0.05)
    assert stats.newcombe_interval(x1, n1, x2, n2) == pytest.approx(ref, abs=1e-10)


def test_newcombe_published_example():
    # Newcombe (1998), Table II example (a): 56/70 vs 48/80 -> (0.0524, 0.3339)
    low, high = stats.newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


@pytest.mark.parametrize("x1,n1,x2,n2", [(120, 5000, 95, 5100), (30, 100, 45, 100), (1, 10, 0, 10)])
def test_two_proportion_test_matches_statsmodels(x1, n1, x2, n2):
    z_ref, p_ref = proportions_ztest([x1, x2], [n1, n2])
    z, p = stats.two_proportion_test(x1, n1, x2, n2)
    assert z == pytest.approx(z_ref, rel=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-10)


def test_no_variance_is_not_significant():
    assert stats.two_proportion_test(0, 100, 0, 100) == (0.0, 1.0)
    r = stats.welch_test(stats.MeanStats.of([0.0] * 5), stats.MeanStats.of([0.0] * 7))
    assert r.p_value == 1.0 and r.ci == (0.0, 0.0)


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.exponential(3.0, 400)
    b = rng.exponential(2.5, 700) + rng.normal(0, 1, 700)
    r = stats.welch_test(stats.MeanStats.of(a), stats.MeanStats.of(b))
    ref = st.ttest_ind(a, b, equal_var=False)
    assert r.t == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert r.ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert r.df == pytest.approx(ref.df, rel=1e-10)


def test_mean_stats_from_sums_and_interval():
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 5.0, 300)
    s = stats.MeanStats.of(a)
    s2 = stats.MeanStats.from_sums(len(a), float(a.sum()), float((a * a).sum()))
    assert s2.mean == pytest.approx(s.mean) and s2.var == pytest.approx(s.var, rel=1e-9)
    ref = DescrStatsW(a).tconfint_mean(0.05)
    assert stats.mean_interval(s) == pytest.approx(ref, rel=1e-10)


def test_relative_lift_delta_method_formula_and_coverage():
    a, b = stats.MeanStats(1000, 0.12, 0.12 * 0.88), stats.MeanStats(1000, 0.10, 0.10 * 0.90)
    lift = stats.relative_lift(a, b)
    assert lift.lift == pytest.approx(0.2)
    # Var(A/B) ~ var_a/(n_a mu_b^2) + mu_a^2 var_b/(n_b mu_b^4)
    assert lift.se == pytest.approx(math.sqrt(0.1056 / (1000 * 0.01) + 0.0144 * 0.09 / (1000 * 1e-4)))
    # coverage of the true lift over simulated experiments is about 95 %
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(400):
        xa = rng.binomial(1, 0.12, 4000)
        xb = rng.binomial(1, 0.10, 4000)
        lo, hi = stats.relative_lift(stats.MeanStats.of(xa), stats.MeanStats.of(xb)).ci
        hits += lo <= 0.2 <= hi
    assert 0.92 <= hits / 400 <= 0.98


def test_relative_lift_without_control_mean_is_nan():
    assert math.isnan(stats.relative_lift(stats.MeanStats(10, 1.0, 1.0), stats.MeanStats(10, 0.0, 0.0)).lift)


def test_srm_matches_scipy_and_flags_a_broken_split():
    chi2, p = stats.srm_test([5030, 4970], [0.5, 0.5])
    ref = st.chisquare([5030, 4970], [5000, 5000])
    assert (chi2, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert p > stats.SRM_ALPHA
    _, p_bad = stats.srm_test([5300, 4700], [0.5, 0.5])
    assert p_bad < stats.SRM_ALPHA
    _, p_uneven = stats.srm_test([2010, 7990], [0.2, 0.8])
    assert p_uneven > 0.05


def test_cuped_theta_is_the_ols_slope_and_reduces_variance():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 2.0, 5000)
    y = 0.8 * x + rng.normal(0, 1.0, 5000)
    theta = stats.cuped_theta(y, x)
    assert theta == pytest.approx(st.linregress(x, y).slope, rel=1e-10)
    adj = stats.cuped_adjust(y, x, theta, float(x.mean()))
    assert adj.mean() == pytest.approx(y.mean())
    rho = np.corrcoef(x, y)[0, 1]
    assert adj.var(ddof=1) == pytest.approx(y.var(ddof=1) * (1 - rho ** 2), rel=1e-9)
    assert stats.cuped_theta(y, np.ones_like(y)) == 0.0


@pytest.mark.parametrize("p_base,mde", [(0.05, 0.1), (0.2, 0.05), (0.02, 0.3)])
def test_sample_size_proportions_matches_statsmodels(p_base, mde):
    es = proportion_effectsize(p_base * (1 + mde), p_base)
    ref = NormalIndPower().solve_power(effect_size=es, alpha=0.05, power=0.8, ratio=1.0)
    n = stats.sample_size_proportions(p_base, mde)
    assert 0 <= n - ref < 2  # the far tail, which statsmodels also counts, is ignored: at most one more user
    assert stats.power_proportions(p_base, p_base * (1 + mde), n) == pytest.approx(
        NormalIndPower().power(es, n, 0.05), rel=1e-9)


@pytest.mark.parametrize("sd,mde", [(10.0, 1.0), (3.0, 0.5)])
def test_sample_size_means_matches_statsmodels(sd, mde):
    ref = NormalIndPower().solve_power(effect_size=mde / sd, alpha=0.05, power=0.8, ratio=1.0)
    assert 0 <= stats.sample_size_means(sd, mde) - ref < 2


def test_power_inputs_are_checked():
    with pytest.raises(ValueError, match="p_base"):
        stats.sample_size_proportions(0.0, 0.1)
    with pytest.raises(ValueError, match="treated rate"):
        stats.sample_size_proportions(0.9, 0.5)


def test_msprt_stays_valid_under_peeking_where_the_naive_test_does_not():
    rng = np.random.default_rng(4)
    n_sims, looks, per_look = 300, 20, 100
    naive = msprt = 0
    for _ in range(n_sims):
        a = rng.normal(0, 1, looks * per_look)
        b = rng.normal(0, 1, looks * per_look)
        p_min_naive = p_min_seq = 1.0
        for t in range(1, looks + 1):
            sa, sb = stats.MeanStats.of(a[: t * per_look]), stats.MeanStats.of(b[: t * per_look])
            w = stats.welch_test(sa, sb)
            p_min_naive = min(p_min_naive, w.p_value)
            p_min_seq = min(p_min_seq, stats.msprt_p_value(w.diff, w.se ** 2, tau2=0.1 ** 2))
        naive += p_min_naive < 0.05
        msprt += p_min_seq < 0.05
    assert naive / n_sims > 0.12          # peeking at a fixed-horizon p-value inflates false positives
    assert msprt / n_sims <= 0.06         # the always-valid one does not
    # and it does detect a real effect
    a, b = rng.normal(0.3, 1, 2000), rng.normal(0, 1, 2000)
    w = stats.welch_test(stats.MeanStats.of(a), stats.MeanStats.of(b))
    assert stats.msprt_p_value(w.diff, w.se ** 2, 0.1 ** 2) < 0.01


def test_horizon_warning():
    assert stats.horizon_warning([100, 120], 500, ended=False).startswith("read early")
    assert stats.horizon_warning([600, 520], 500, ended=False) is None
    assert stats.horizon_warning([10, 12], 500, ended=True) is None
