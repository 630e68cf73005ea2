"""Uplift-targeted audiences (``model.kind: uplift``): a past campaign's effect model picks the users,
sleeping dogs are never treated, offers by expected profit, the control group kept, the budget honoured.

The past campaigns are made up with planted effects on synthetic profiles' columns, so a test knows
who must (not) be treated.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from serving.campaigns.audience import build_audience, model_scorer, select_and_assign, send_date_of
from serving.campaigns.eligibility import eligibility_steps
from serving.campaigns.scoring import CampaignModel
from serving.campaigns.spec import CampaignConfigError, parse_campaign
from serving.campaigns.synthetic import synthetic_profiles

REPO = Path(__file__).resolve().parents[3]
FEATURES = ["recency_days", "monetary", "named_segment"]
FAST = {"T-LR": {"kind": "lr", "C": 1.0, "interactions": False},
        "S-GBT": {"kind": "s", "gbt": {"max_iter": 30, "random_state": 0}}}


def past_campaign(n: int, seed: int, levels: bool = False) -> pd.DataFrame:
    """Effect +0.25 for recent users (< 60 days), -0.15 for casual browsers (sleeping dogs), else 0;
    with ``levels``: treated users randomised to discount 0.1 or 0.2, the 0.2 level twice the effect."""
    p = synthetic_profiles(n, seed=seed)
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    effect = np.where(p["recency_days"] < 60, 0.25, np.where(p["named_segment"].astype(str) == "casual_browser", -0.15, 0.0))
    table = p[FEATURES].copy()
    table["named_segment"] = table["named_segment"].astype(str)
    if levels:
        lv = np.where(t == 1, rng.choice([0.1, 0.2], n), 0.0)
        effect = np.where(lv == 0.2, 2 * np.abs(effect), np.abs(effect) * 0.2)
        table["discount"] = lv
    table["treated"] = t
    table["bought"] = (rng.random(n) < 0.3 + t * effect).astype(int)
    return table


def train_run(tmp: Path, table: pd.DataFrame, *over: str) -> Path:
    from training import uplift

    table.to_parquet(tmp / "past.parquet")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("uplift/table", overrides=[f"data.path={tmp / 'past.parquet'}", "data.treatment=treated",
                                                 "data.outcome=bought", f"out_dir={tmp / 'run'}",
                                                 f"paths.artifacts={tmp}", *over])
    OmegaConf.update(cfg, "model.candidates", FAST, merge=False)
    OmegaConf.update(cfg, "model.blends", {}, merge=False)
    return Path(uplift.run(cfg)["run_dir"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("past"), past_campaign(8000, seed=11))


def uplift_campaign(campaign_raw, run_dir: Path, **sections):
    raw = json.loads(json.dumps(campaign_raw))
    raw["model"].update(kind="uplift", features=FEATURES, log_features=[])
    raw["eligibility"].update(lifecycle=None, min_recency_days=None, max_recency_days=None, min_frequency=None)
    raw["offer"].update(tiers=[], default_discount=0.0, levels=[0.0, 0.1, 0.2])
    raw["budget"].update(max_users=1500)
    raw["job"]["model_dir"] = str(run_dir)
    for k, v in sections.items():
        raw[k].update(v)
    return parse_campaign(raw)


def test_sleeping_dogs_never_get_an_offer_and_are_counted(campaign_raw, profiles, run_dir):
    c = uplift_campaign(campaign_raw, run_dir)
    model = CampaignModel.load(run_dir)
    res = build_audience(profiles, c, model_scorer(model, "cpu"), model=model)
    aud, summary = res.audience, res.audience.attrs["uplift"]
    treated = aud[aud["group"] == "treatment"]
    assert len(treated) == 1500 and (aud["group"] == "control").sum() > 0          # budget, control kept
    assert (treated["uplift"] >= 0).all() and (treated["expected_profit"] > 0).all()
    counts = res.counts
    assert summary["sleeping_dogs"] > 0 and summary["sleeping_dogs"] == counts["exclusions.opted_out"] - counts["uplift.sleeping_dogs"]
    assert summary["expected_incremental_conversions"] == pytest.approx(float(treated["uplift"].astype(float).sum()), rel=1e-5)
    assert summary["expected_cost"]["channel"] == pytest.approx(float(treated["cost"].sum()))
    curve = summary["profit_curve"]
    assert curve["users"][-1] == summary["scored"] and max(curve["profit"]) > 0


def test_without_a_budget_every_user_but_the_sleeping_dogs_is_treated(campaign_raw, profiles, run_dir):
    c = uplift_campaign(campaign_raw, run_dir, offer={"levels": [], "kind": "none"}, budget={"max_users": None},
                        control={"fraction": 0.0})
    model = CampaignModel.load(run_dir)
    res = build_audience(profiles, c, model_scorer(model, "cpu"), model=model)
    keep, _, _ = eligibility_steps(profiles, c)
    eligible = profiles[keep]
    negative = model.score_matrix(model.feature_matrix(eligible)) < 0       # the model's own estimate
    sent = eligible["user_key"].astype(str).isin(set(res.audience["user_key"].astype(str))).to_numpy()
    assert not (sent & negative).any() and sent[~negative].all()
    assert res.audience.attrs["uplift"]["sleeping_dogs"] == int(negative.sum())
    # and the estimate finds the planted dogs: casual browsers not recent (> 90 days, away from the edge)
    dogs = (eligible["named_segment"].astype(str) == "casual_browser").to_numpy() & (eligible["recency_days"] > 90).to_numpy()
    assert negative[dogs].mean() > 0.8 and negative[~dogs & (eligible["recency_days"] < 50).to_numpy()].mean() < 0.05


def test_uplift_ranks_the_persuadable_first(campaign_raw, profiles, run_dir):
    """Treated users are the recent ones (the planted +0.25), not merely the likeliest buyers."""
    c = uplift_campaign(campaign_raw, run_dir, offer={"levels": [], "kind": "none"}, budget={"max_users": 800})
    model = CampaignModel.load(run_dir)
    aud = build_audience(profiles, c, model_scorer(model, "cpu"), model=model).audience
    rec = profiles.set_index(profiles["user_key"].astype(str))["recency_days"]
    treated = aud.loc[aud["group"] == "treatment", "user_key"].astype(str)
    assert (rec.loc[treated] < 60).mean() > 0.9
    assert aud.attrs["uplift"]["mode"] == "incremental_response"


def test_offer_level_maximises_expected_profit(campaign_raw, profiles, run_dir):
    from serving.campaigns import offers

    c = uplift_campaign(campaign_raw, run_dir, offer={"elasticity": 6.0}, evaluation={"average_order_value": 50.0})
    model = CampaignModel.load(run_dir)
    frame = profiles.iloc[:3000]
    score = model.score_matrix(model.feature_matrix(frame))
    econ = offers.economics(frame, score, np.full(len(frame), 0.02), c, model)
    x = model.feature_matrix(frame)
    p1 = model.uplift.p_treated_encoded(x)
    p0 = np.clip(p1 - score, 0, 1)
    ps = np.clip(frame["price_sensitivity"].fillna(0.5).to_numpy(), 0, 1)
    brute = []
    for d in (0.0, 0.1, 0.2):
        p1d = np.minimum(1, p1 * (1 + 6.0 * ps * d))
        brute.append(50.0 * (c.evaluation.margin_rate * (p1d - p0) - d * p1d) - 0.02)
    brute = np.stack(brute, 1)
    assert np.allclose(econ.profit, brute.max(1), atol=1e-6)
    assert set(np.unique(econ.offer)) > {0.0}          # with this elasticity some discounts pay
    assert "price-sensitivity rule" in econ.offer_rule


def test_levels_learnt_from_a_randomised_past_campaign(campaign_raw, profiles, tmp_path):
    run = train_run(tmp_path, past_campaign(8000, seed=3, levels=True), "data.levels=discount", "data.exclude=[]")
    c = uplift_campaign(campaign_raw, run, offer={"levels": [0.1, 0.2]}, evaluation={"margin_rate": 0.9,
                                                                                     "average_order_value": 100.0})
    model = CampaignModel.load(run)
    assert sorted(model.uplift.levels) == [0.1, 0.2]
    aud = build_audience(profiles, c, model_scorer(model, "cpu"), model=model).audience
    treated = aud[aud["group"] == "treatment"]
    assert "learnt per level for [0.1, 0.2]" in aud.attrs["uplift"]["offer_rule"]
    assert (treated["offer"] == np.float32(0.2)).mean() > 0.8        # the level with twice the effect


def test_the_ray_path_loads_the_model_and_selects_the_same(campaign_raw, profiles, run_dir):
    """``select_and_assign`` without the model (as ``serving.campaigns.ray_audience`` calls it) loads
    ``job.model_dir`` and gives the same audience; per-batch scoring equals whole-frame scoring."""
    c = uplift_campaign(campaign_raw, run_dir)
    model = CampaignModel.load(run_dir)
    keep, steps, channel = eligibility_steps(profiles, c)
    kept = profiles[keep]
    whole = model.score_matrix(model.feature_matrix(kept))
    batched = np.concatenate([model.score_matrix(model.feature_matrix(kept.iloc[i:i + 333]), batch_size=50)
                              for i in range(0, len(kept), 333)])
    assert np.allclose(whole, batched)
    day = send_date_of(profiles, c)
    a = select_and_assign(kept, whole, channel[keep], c, list(steps), day, model=model)
    b = select_and_assign(kept, whole, channel[keep], c, list(steps), day)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("section,values,field", [
    ("budget", {"max_cost": 0.005}, "budget.max_cost"),      # below the cheapest channel (push 0.01)
    ("budget", {"max_users": 0}, "budget.max_users"),
    ("offer", {"levels": [0.2, 0.1]}, "offer.levels"),
    ("offer", {"levels": [1.5]}, "offer.levels[0]"),
])
def test_a_budget_that_cannot_pay_one_offer_or_bad_levels_are_refused(campaign_raw, section, values, field):
    raw = json.loads(json.dumps(campaign_raw))
    raw["model"]["kind"] = "uplift"
    raw[section].update(values)
    with pytest.raises(CampaignConfigError) as e:
        parse_campaign(raw)
    assert e.value.field == field


def test_offer_levels_need_an_uplift_model(campaign_raw):
    raw = json.loads(json.dumps(campaign_raw))
    raw["offer"]["levels"] = [0.0, 0.1]
    with pytest.raises(CampaignConfigError, match="needs an uplift model"):
        parse_campaign(raw)


@pytest.mark.slow
def test_hillstrom_next_campaign_end_to_end(tmp_path, monkeypatch):
    """Trained on (a slice of) Hillstrom's e-mail experiment, applied to the same customers' profiles:
    the audience job writes the uplift section, the report and keeps a control group."""
    from features.adapters.hillstrom import load_hillstrom
    from serving.campaigns import build_audience as job
    from training.campaigns.hillstrom_profiles import hillstrom_profiles

    monkeypatch.setenv("SHOPREC_PSEUDO_KEY", "test-key")
    src = REPO.parent / "shared" / "data" / "hillstrom" / "hillstrom.csv"
    if not src.is_file():
        pytest.skip("Hillstrom data not present")
    pd.read_csv(src, nrows=8000).to_csv(tmp_path / "hill.csv", index=False)
    prof = tmp_path / "profiles" / "hillstrom"
    prof.mkdir(parents=True)
    hillstrom_profiles(load_hillstrom(tmp_path / "hill.csv")).to_parquet(prof / "profiles.parquet")
    from training import uplift

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        ucfg = compose("uplift/hillstrom_campaign", overrides=[f"paths.artifacts={tmp_path}", f"data.path={tmp_path / 'hill.csv'}"])
        cfg = compose("config", overrides=["campaign=hillstrom_next", f"paths.artifacts={tmp_path}",
                                           "campaign.budget.max_users=2000"])
    OmegaConf.update(ucfg, "model.candidates", FAST, merge=False)
    OmegaConf.update(ucfg, "model.blends", {}, merge=False)
    uplift.run(ucfg)
    res = job.run(cfg)
    m = res.manifest
    assert m["counts"]["treatment"] <= 2000 and m["counts"]["control"] > 0
    u = m["uplift"]
    assert u["outcome"] == "conversion" and u["expected_incremental_conversions"] > 0
    assert u["expected_cost"]["total"] >= u["expected_cost"]["channel"] == pytest.approx(0.10 * m["counts"]["treatment"])
    assert (res.out_dir / "report.html").is_file() and (res.out_dir / "expected_profit.png").is_file()
    assert "Sleeping dogs" in (res.out_dir / "report.html").read_text()
    aud = pd.read_parquet(res.out_dir / "audience.parquet")
    assert (aud.loc[aud["group"] == "treatment", "uplift"] >= 0).all()
