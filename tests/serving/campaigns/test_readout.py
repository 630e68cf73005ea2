"""Campaign readout: effects with Newcombe/Welch intervals and p-values, ROI on margin with the discount
counted once (hand-computed cases), outcome validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.campaigns.outcomes import load_outcomes
from serving.campaigns.readout import economics, evaluate, proportion_effect


def _audience(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(n) < 0.5, "treatment", "control")
    return pd.DataFrame({"user_key": [f"k{i}" for i in range(n)], "score": rng.random(n).astype(np.float32),
                         "group": group, "channel": "email", "send_at": pd.Timestamp("2011-12-11 10:00", tz="UTC"),
                         "offer": np.float32(0.1), "segment": rng.integers(0, 3, n).astype(str),
                         "cost": np.where(group == "treatment", 0.02, 0.0)})


def _frame(groups: list[tuple[str, int, float, float, float]]) -> pd.DataFrame:
    """Rows (group, count, paid revenue, offer, channel cost) -> one row per user."""
    rows = [(g, paid, offer, cost) for g, n, paid, offer, cost in groups for _ in range(n)]
    f = pd.DataFrame(rows, columns=["group", "revenue", "offer", "cost"])
    return f


def test_proportion_effect_matches_statsmodels_newcombe():
    sm = pytest.importorskip("statsmodels.stats.proportion")
    t = np.r_[np.ones(300), np.zeros(700)]
    c = np.r_[np.ones(200), np.zeros(800)]
    e = proportion_effect("conversion", t, c)
    assert e.uplift == pytest.approx(0.1) and e.interval == "newcombe"
    low, high = sm.confint_proportions_2indep(300, 1000, 200, 1000, method="newcomb", compare="diff")
    assert (e.ci_low, e.ci_high) == pytest.approx((low, high), abs=1e-9)
    _, p = sm.proportions_ztest([300, 200], [1000, 1000])
    assert e.p_value == pytest.approx(p, rel=1e-9)


def test_interval_stays_honest_at_zero_and_one():
    """100 % conversion (every treated user redeemed) and 0 %: Wald gives a zero-width interval; Newcombe not."""
    e = proportion_effect("conversion", np.ones(20), np.ones(20))
    assert e.uplift == 0.0 and e.ci_low < -0.1 and e.ci_high > 0.1
    e = proportion_effect("conversion", np.ones(20), np.r_[np.ones(15), np.zeros(5)])
    assert e.uplift == pytest.approx(0.25) and 0.0 < e.ci_low < 0.25 < e.ci_high <= 1.0
    e = proportion_effect("conversion", np.zeros(30), np.zeros(30))
    assert e.ci_low < 0 < e.ci_high


def test_roi_no_effect_loses_the_whole_cost():
    """No causal effect, 20 % offer: treated users buy what they would have (list 50) and pay 40.
    Margin 30 %: treated 50*0.3 - 10 = 5, control 15 per user; 100 treated -> -1000 margin,
    channel 100 * 0.10 = 10, discounts 1000; net -1010 on a cost of 1010: ROI -1.0 (not -1.99)."""
    f = _frame([("treatment", 100, 40.0, 0.2, 0.10), ("control", 100, 50.0, 0.0, 0.0)])
    m = economics(f, margin_rate=0.30)
    assert m["incremental_margin"] == pytest.approx(-1000.0)
    assert m["costs"] == pytest.approx({"channel": 10.0, "discounts": 1000.0, "total": 1010.0})
    assert m["net_incremental_profit"] == pytest.approx(-1010.0)
    assert m["roi"] == pytest.approx(-1.0)
    assert m["incremental_revenue"] == pytest.approx(-1000.0) and m["incremental_list_revenue"] == pytest.approx(0.0)


def test_roi_known_effect():
    """Control: 50 of 100 buy for 100. Treatment (10 % off): 80 of 100 buy, list 100, pay 90.
    Margin 30 %: treated buyer 30 - 10 = 20 -> 16 per user; control 15 per user: +100 margin.
    Channel 100 * 0.05 = 5, discounts 80 * 10 = 800: net 95, cost 805, ROI 95 / 805."""
    f = _frame([("treatment", 80, 90.0, 0.1, 0.05), ("treatment", 20, 0.0, 0.1, 0.05),
                ("control", 50, 100.0, 0.0, 0.0), ("control", 50, 0.0, 0.0, 0.0)])
    m = economics(f, margin_rate=0.30)
    assert m["incremental_margin"] == pytest.approx(100.0)
    assert m["incremental_revenue"] == pytest.approx(100 * (72.0 - 50.0))
    assert m["costs"]["discounts"] == pytest.approx(800.0) and m["costs"]["channel"] == pytest.approx(5.0)
    assert m["roi"] == pytest.approx(95.0 / 805.0)
    low, high = m["roi_ci"]
    assert low < m["roi"] < high


def test_roi_full_redemption():
    """Every treated user redeems (100 %, 25 % off, list 40, pays 30); 60 % of control buy at 40.
    Margin 50 %: treated 20 - 10 = 10 per user, control 0.6 * 20 = 12: -2 per user, 50 users -> -100;
    channel 0, discounts 50 * 10 = 500: ROI -100 / 500 = -0.2."""
    f = _frame([("treatment", 50, 30.0, 0.25, 0.0), ("control", 30, 40.0, 0.0, 0.0), ("control", 20, 0.0, 0.0, 0.0)])
    m = economics(f, margin_rate=0.50)
    assert m["incremental_margin"] == pytest.approx(-100.0)
    assert m["roi"] == pytest.approx(-0.2)


def test_backtest_counts_no_discount_and_no_cost():
    f = _frame([("treatment", 10, 40.0, 0.2, 0.10), ("control", 10, 40.0, 0.0, 0.0)])
    m = economics(f, margin_rate=0.30, discounted=False)
    assert m["costs"]["total"] == 0.0 and m["roi"] is None and m["incremental_margin"] == pytest.approx(0.0)


class _Evaluation:
    retention_days = 60
    margin_rate = 0.3


class _Campaign:
    evaluation = _Evaluation()


def test_planted_effect_is_found_and_null_effect_is_not():
    a = _audience()
    rng = np.random.default_rng(1)
    treated = (a["group"] == "treatment").to_numpy()
    conv = rng.random(len(a)) < np.where(treated, 0.30, 0.20)
    out = pd.DataFrame({"user_key": a["user_key"], "responded": conv.astype(int), "converted": conv.astype(int),
                        "revenue": np.where(conv, 50.0, 0.0), "retained": conv.astype(int)})
    res = evaluate(a, out, campaign=_Campaign())
    conv_e = next(e for e in res["effects"] if e["metric"] == "conversion")
    assert conv_e["ci_low"] < 0.10 < conv_e["ci_high"] and conv_e["p_value"] < 1e-6
    assert res["incremental_revenue"] == pytest.approx(
        (out["revenue"][treated].mean() - out["revenue"][~treated].mean()) * treated.sum())
    assert res["costs"]["channel"] == pytest.approx(0.02 * treated.sum())
    assert res["roi"] == pytest.approx(res["net_incremental_profit"] / res["costs"]["total"])
    null = out.assign(converted=(rng.random(len(a)) < 0.2).astype(int))
    res0 = evaluate(a, null, campaign=_Campaign())
    c0 = next(e for e in res0["effects"] if e["metric"] == "conversion")
    assert c0["ci_low"] < 0 < c0["ci_high"]
    assert "aa_check" not in res0


def test_backtest_readout_states_the_aa_check():
    a = _audience(seed=3)
    rng = np.random.default_rng(4)
    conv = (rng.random(len(a)) < 0.2).astype(int)
    out = pd.DataFrame({"user_key": a["user_key"], "responded": conv, "converted": conv,
                        "revenue": conv * 30.0, "retained": conv})
    res = evaluate(a, out, campaign=_Campaign(), backtest=True)
    assert res["aa_check"]["nothing_sent"] and res["aa_check"]["passed"]
    assert "nothing was sent" in res["aa_check"]["statement"] and res["roi"] is None
    # a real difference between the groups fails the check, and the statement says which metric
    planted = out.assign(converted=np.where(a["group"] == "treatment", 1, out["converted"]))
    bad = evaluate(a, planted, campaign=_Campaign(), backtest=True)
    assert not bad["aa_check"]["passed"] and "conversion" in bad["aa_check"]["statement"]


@pytest.mark.parametrize("bad,match", [
    ({"converted": [2, 0]}, "converted must be 0/1"),
    ({"revenue": [-1.0, 0.0]}, "revenue must be a number >= 0"),
    ({"user_key": ["a", "a"]}, "appears twice"),
])
def test_bad_outcomes_are_rejected(tmp_path, bad, match):
    df = pd.DataFrame({"user_key": ["a", "b"], "responded": [1, 0], "converted": [1, 0], "revenue": [5.0, 0.0], "retained": [1, 1]})
    for k, v in bad.items():
        df[k] = v
    path = tmp_path / "o.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=match):
        load_outcomes(path)
    with pytest.raises(ValueError, match="lacks column"):
        df.drop(columns=["retained"]).to_csv(path, index=False)
        load_outcomes(path)


def test_aa_false_positive_rate_is_near_alpha_without_effect():
    from serving.campaigns.readout import aa_false_positive_rate

    rng = np.random.default_rng(7)
    n = 3000
    conv = (rng.random(n) < 0.15).astype(int)
    frame = pd.DataFrame({"segment": rng.integers(0, 4, n).astype(str), "converted": conv,
                          "revenue": conv * rng.lognormal(3.0, 1.0, n)})
    out = aa_false_positive_rate(frame, fraction=0.2, draws=200, seed=0)
    assert out["draws"] == 200
    for rate in out["false_positive_rate"].values():
        assert 0.01 <= rate <= 0.10
    # at alpha 0.5 about half the intervals exclude zero: the count follows alpha
    half = aa_false_positive_rate(frame, fraction=0.2, draws=200, seed=0, alpha=0.5)
    assert all(0.35 <= r <= 0.65 for r in half["false_positive_rate"].values())
