"""BG/NBD + Gamma-Gamma: summary statistics, agreement with lifetimes, holdout accuracy on CDNOW."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profiles.clv import ClvModel, bgnbd_log_likelihood, calibration_holdout, fit, predict, rfm_summary
from features.profiles.transactions import read_cdnow

CFG = {"time_unit_days": 7.0, "penalizer": 0.0, "fit_sample": 200000, "min_users": 20, "horizon_days": 273}


@pytest.fixture(scope="module")
def cdnow(data_root):
    tx = read_cdnow(data_root / "cdnow" / "CDNOW_master.txt")
    assert len(tx) == 69659 and tx["user_id"].nunique() == 23570     # the published CDNOW master cohort
    return tx


def test_summary_follows_the_lifetimes_convention():
    tx = pd.DataFrame({"user_id": [0, 0, 0, 1], "value": [10.0, 20.0, 30.0, 5.0],
                       "ts": pd.to_datetime(["2024-01-01", "2024-01-01 12:00", "2024-01-11", "2024-01-05"], utc=True, format="ISO8601")})
    s = rfm_summary(tx, pd.Timestamp("2024-01-21", tz="UTC"), 1.0)
    assert s.loc[0].tolist() == [1.0, 10.0, 20.0, 30.0]     # two purchase days -> 1 repeat; monetary of the repeat only
    assert s.loc[1].tolist() == [0.0, 0.0, 16.0, 0.0]


def test_fit_matches_lifetimes_on_cdnow(cdnow):
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    s = rfm_summary(cdnow[cdnow["user_id"] <= 8000], pd.Timestamp("1997-10-01", tz="UTC"), 7.0)   # a third, for speed
    model = fit(s, CFG, 0)
    ref = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    args = tuple(s[c].to_numpy() for c in ("frequency", "recency", "T"))
    ours = bgnbd_log_likelihood(np.array([model.bgnbd[k] for k in ("r", "alpha", "a", "b")]), *args).mean()
    theirs = bgnbd_log_likelihood(ref.params_[["r", "alpha", "a", "b"]].to_numpy(), *args).mean()
    assert ours >= theirs - 1e-6                       # at least as good a maximum as lifetimes finds
    for k, v in ref.params_.items():
        assert model.bgnbd[k] == pytest.approx(v, rel=0.03)
    rep = s[(s["frequency"] > 0) & (s["monetary_value"] > 0)]
    ref_gg = GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"])
    for k, v in ref_gg.params_.items():
        assert model.gamma_gamma[k] == pytest.approx(v, rel=0.03)
    # Same parameters -> the same predictions as lifetimes (formulas, not just the fit).
    same = ClvModel(7.0, {k: float(v) for k, v in ref.params_.items()}, {k: float(v) for k, v in ref_gg.params_.items()}, 0, 0, 0.0)
    pred = predict(same, s, 39 * 7)
    want = ref.conditional_expected_number_of_purchases_up_to_time(39, s["frequency"], s["recency"], s["T"])
    assert np.abs(pred["expected_purchases"].to_numpy() - want.to_numpy()).max() < 1e-6
    alive = ref.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
    assert np.abs(pred["p_alive"].to_numpy() - np.asarray(alive)).max() < 1e-6
    value = ref_gg.conditional_expected_average_profit(rep["frequency"], rep["monetary_value"])
    assert np.abs(pred.loc[rep.index, "expected_value"].to_numpy() - value.to_numpy()).max() < 1e-6
    assert pred["churn_prob"].between(0, 1).all() and (pred["churn_prob"] >= 1 - pred["p_alive"] - 1e-12).all()


def test_recent_frequent_buyers_churn_less():
    tx = pd.DataFrame({"user_id": np.repeat(np.arange(60), 3), "value": 10.0,
                       "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.tile([0, 30, 60], 60), unit="D")
                       + pd.to_timedelta(np.repeat(np.arange(60) * 3, 3), unit="D")})
    s = rfm_summary(tx, pd.Timestamp("2024-12-01", tz="UTC"), 7.0)
    pred = predict(fit(s, CFG, 0), s, 90)
    # Same pattern, later start = more recent last purchase -> lower churn probability.
    assert pred["churn_prob"].iloc[-1] < pred["churn_prob"].iloc[0]


def test_holdout_beats_the_naive_rate_on_cdnow(cdnow):
    res = calibration_holdout(cdnow, pd.Timestamp("1997-10-01", tz="UTC"), pd.Timestamp("1998-07-01", tz="UTC"), CFG, 0)
    f = res.frame
    assert res.n_users == 23570
    mae = lambda col: (f[col] - f[col.replace("pred", "actual").replace("naive", "actual")]).abs().mean()  # noqa: E731
    assert mae("pred_purchases") < mae("naive_purchases")
    assert mae("pred_revenue") < mae("naive_revenue")
    # Aggregate holdout purchases within 15 % (Fader et al. report a close aggregate fit on CDNOW).
    assert f["pred_purchases"].sum() == pytest.approx(f["actual_purchases"].sum(), rel=0.15)


def test_bench_clv_reports_json_last(data_root, repo_root, tmp_path):
    """The benchmark as a user runs it: a table, then one JSON object as the last line."""
    import json
    import subprocess
    import sys

    def bench(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo_root / "scripts" / "bench_clv.py"), *overrides,
                               f"paths.data_root={data_root}", f"hydra.run.dir={tmp_path}/hydra"],
                              cwd=repo_root, capture_output=True, text=True, timeout=600)

    done = bench("profile.bench_clv.datasets=[cdnow]")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.strip().splitlines()
    assert "MAE model" in out[1]
    r = json.loads(out[-1])["cdnow"]
    assert r["customers"] == 23570 and r["transactions"] == 69659
    assert r["purchases_mae_model"] < r["purchases_mae_naive"] and 0.5 < r["churn_auc"] <= 1
    refused = bench("profile.bench_clv.datasets=[nope]")
    assert refused.returncode != 0 and "unknown dataset" in refused.stderr
