"""Campaign evaluation: effects with CIs and p-values, costs and ROI, outcome validation, the report."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.campaign import scripts_loader

ev = scripts_loader.load("evaluate_campaign")


def _audience(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(n) < 0.5, "treatment", "control")
    return pd.DataFrame({"user_key": [f"k{i}" for i in range(n)], "score": rng.random(n).astype(np.float32),
                         "group": group, "channel": "email", "send_at": pd.Timestamp("2011-12-11 10:00", tz="UTC"),
                         "offer": np.float32(0.1), "segment": rng.integers(0, 3, n).astype(str),
                         "cost": np.where(group == "treatment", 0.02, 0.0)})


def test_proportion_effect_matches_known_values():
    t = np.r_[np.ones(300), np.zeros(700)]
    c = np.r_[np.ones(200), np.zeros(800)]
    e = ev.proportion_effect("conversion", t, c)
    assert e.uplift == pytest.approx(0.1)
    se = np.sqrt(0.3 * 0.7 / 1000 + 0.2 * 0.8 / 1000)
    assert e.ci_low == pytest.approx(0.1 - 1.96 * se) and e.ci_high == pytest.approx(0.1 + 1.96 * se)


def test_planted_effect_is_found_and_null_effect_is_not():
    a = _audience()
    rng = np.random.default_rng(1)
    treated = (a["group"] == "treatment").to_numpy()
    conv = rng.random(len(a)) < np.where(treated, 0.30, 0.20)
    out = pd.DataFrame({"user_key": a["user_key"], "responded": conv.astype(int), "converted": conv.astype(int),
                        "revenue": np.where(conv, 50.0, 0.0), "retained": conv.astype(int)})
    res = ev.evaluate(a, out, campaign=_Campaign())
    conv_e = next(e for e in res["effects"] if e["metric"] == "conversion")
    assert conv_e["ci_low"] < 0.10 < conv_e["ci_high"] and conv_e["p_value"] < 1e-6
    assert res["incremental_revenue"] == pytest.approx(
        (out["revenue"][treated].mean() - out["revenue"][~treated].mean()) * treated.sum())
    assert res["costs"]["channel"] == pytest.approx(0.02 * treated.sum())
    assert res["roi"] == pytest.approx((res["incremental_revenue"] - res["costs"]["total"]) / res["costs"]["total"])
    null = out.assign(converted=(rng.random(len(a)) < 0.2).astype(int))
    res0 = ev.evaluate(a, null, campaign=_Campaign())
    c0 = next(e for e in res0["effects"] if e["metric"] == "conversion")
    assert c0["ci_low"] < 0 < c0["ci_high"]


class _Campaign:
    class evaluation:
        retention_days = 60


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
        ev.load_outcomes(path)
    with pytest.raises(ValueError, match="lacks column"):
        df.drop(columns=["retained"]).to_csv(path, index=False)
        ev.load_outcomes(path)
