"""Campaign backtest on Online Retail: audience as of a cut-off date, outcomes from the real purchases
after each user's send_at. Nothing was sent, so treatment and control differ only by chance: every
interval must cover zero (an A/A check on real data) and the readout says so."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.serving.campaigns.conftest import make_cfg

pytestmark = pytest.mark.slow

CUTOFF = "2011-09-01"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_root):
    from features.prepare import run

    root = tmp_path_factory.mktemp("artifacts")
    run(make_cfg("data=online_retail", f"paths.artifacts={root}", f"paths.data_root={data_root}", "force=true"))
    return root


def test_online_retail_backtest_is_an_aa_check(prepared):
    from features.processed import load_events, load_users
    from training.campaigns.backtest import run

    cfg = make_cfg("campaign=winback", f"paths.artifacts={prepared}", f"campaign.job.backtest_cutoff={CUTOFF}",
                   "campaign.model.seeds=1", "campaign.model.epochs=8")
    res = run(cfg)
    assert res["outcomes_source"] == "events" and res["backtest"] and res["backtest_cutoff"] == CUTOFF
    assert res["n_treatment"] == 600 and res["n_control"] >= 100          # winback: budget 600, 20 % control
    assert res["outcomes_info"]["users_with_incomplete_window"] == 0      # 30/60-day windows end before the data
    aa = res["aa_check"]
    assert aa["nothing_sent"] and aa["passed"], aa["statement"]
    assert "nothing was sent" in aa["statement"] and "covers zero" in aa["statement"]
    for e in res["effects"]:
        assert e["ci_low"] <= 0.0 <= e["ci_high"], e
    conv = next(e for e in res["effects"] if e["metric"] == "conversion")
    assert 0.05 < conv["control"] < 0.6 and 0.05 < conv["treatment"] < 0.6   # real repeat purchases happen
    assert res["roi"] is None and res["costs"]["total"] == 0.0
    cal = res["aa_calibration"]                                            # 200 random re-splits, no effect
    assert cal["draws"] == 200 and all(0.01 <= r <= 0.10 for r in cal["false_positive_rate"].values()), cal

    # the outcomes are the real purchases after each user's own send_at: recompute one by hand
    report = prepared / "reports" / "campaigns" / f"winback-backtest-{CUTOFF}"
    audience = pd.read_parquet(report / "audience.parquet")
    outcomes = pd.read_parquet(report / "outcomes.parquet").set_index("user_key")
    assert (audience["send_at"] > pd.Timestamp(CUTOFF, tz="UTC")).all()
    processed = prepared / "processed" / "online_retail"
    users = load_users(processed).set_index("user_key")["user_id"]
    ev = load_events(processed, columns=["user_id", "event", "ts", "price", "quantity"])
    buyer = outcomes.index[outcomes["converted"] == 1][0]
    row = audience.set_index(audience["user_key"].astype(str)).loc[buyer]
    mine = ev[(ev["user_id"] == users[buyer]) & (ev["event"] == "purchase") & (ev["ts"] >= row["send_at"])
              & (ev["ts"] < row["send_at"] + pd.Timedelta(days=30))]
    assert len(mine) > 0
    assert outcomes.loc[buyer, "revenue"] == pytest.approx(float((mine["price"] * mine["quantity"]).sum()), abs=0.01)
    saved = json.loads((report / "results.json").read_text())
    assert saved["aa_check"]["passed"] and (report / "report.html").read_text().count("nothing was sent") == 1
