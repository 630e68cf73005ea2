"""The campaign jobs end to end on a small synthetic shop: train -> audience -> readout from events,
the bundle left immutable (a new version adds the campaign), bad values failing before training."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from serving.campaigns.spec import CampaignConfigError
from tests.serving.campaigns.conftest import make_cfg

FAST = ("campaign.data=synthetic", "campaign.model.seeds=1", "campaign.model.epochs=2")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Prepared synthetic events, their profiles and one bundle version (LATEST)."""
    from features.prepare import run as prepare
    from features.profile import run as profile
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle

    root = tmp_path_factory.mktemp("artifacts")
    base = ("data=synthetic", "data.synthetic.n_events=20000", f"paths.artifacts={root}", "force=true")
    prepare(make_cfg(*base))
    profile(make_cfg(*base))
    build_synthetic_bundle(root / "bundles" / "b1", SyntheticBundleSpec(seed=0), write_latest=True)
    return root


def cfg(root, *overrides):
    return make_cfg("campaign=winback", f"paths.artifacts={root}", *FAST, *overrides)


def test_train_build_publish_and_read_out(shop):
    from serving.bundle import latest_name, read_manifest
    from serving.campaigns import build_audience, evaluate
    from serving.campaigns.scoring import load_campaign_scorer
    from training.campaigns import train

    t = train.run(cfg(shop))
    assert (t.model_dir / "model.pt").is_file() and (t.model_dir / "manifest.json").is_file()
    b = build_audience.run(cfg(shop))
    aud = b.audience
    assert len(aud) > 0 and set(aud["group"].astype(str)) == {"treatment", "control"}
    assert b.manifest["warnings"] == [] and (b.out_dir / "model" / "model.json").is_file()
    # a new bundle version adds campaigns/winback/; the parent is unchanged; LATEST moves
    assert b.bundle_dir is not None and b.bundle_dir.name != "b1"
    assert latest_name(shop / "bundles") == b.bundle_dir.name
    assert not (shop / "bundles" / "b1" / "campaigns").exists()
    m = read_manifest(b.bundle_dir, validate=False)
    assert m["parent"] == "b1" and "winback" in m["campaigns"]
    scorer = load_campaign_scorer(b.bundle_dir, "winback")
    assert scorer is not None and scorer.score([str(aud["user_key"].iloc[0])])[0] is not None
    # the readout derives outcomes from the events; the send date is after the data, so it says the
    # windows are not over
    res = evaluate.run(cfg(shop))
    assert res["outcomes_source"] == "events" and res["n_treatment"] + res["n_control"] == len(aud)
    assert any("incomplete" in w for w in res["warnings"])
    assert json.loads((shop / "reports" / "campaigns" / "winback" / "results.json").read_text())["outcomes_source"] == "events"


def test_readout_from_events_counts_real_purchases_after_send_at(shop):
    """Send date inside the data: outcomes are the synthetic shop's purchases after send_at."""
    from serving.campaigns import build_audience, evaluate
    from training.campaigns import train

    ev = pd.read_parquet(shop / "processed" / "synthetic" / "events.parquet", columns=["ts"])
    day = (ev["ts"].min() + (ev["ts"].max() - ev["ts"].min()) / 2).date()
    over = (f"campaign.send_time.send_date={day}", "campaign.job.write_bundle=false", "campaign.budget.max_users=null",
            "campaign.eligibility.lifecycle=null", "campaign.eligibility.min_recency_days=null",
            "campaign.eligibility.max_recency_days=null", "campaign.eligibility.min_frequency=null",
            "campaign.objective.within_days=7")
    train.run(cfg(shop, *over))
    build_audience.run(cfg(shop, *over))
    res = evaluate.run(cfg(shop, *over))
    conv = next(e for e in res["effects"] if e["metric"] == "conversion")
    assert conv["treatment"] + conv["control"] > 0 and res["incremental_revenue"] != 0.0
    assert res["outcomes_info"]["users_with_incomplete_window"] == 0


@pytest.mark.parametrize("override,field", [
    ("campaign.model.lr=-0.1", "model.lr"),
    ("campaign.model.features=[recency_days,favourite_colour]", "model.features"),
    ("campaign.eligibility.segments=[high_valu]", "eligibility.segments"),
    ("campaign.eligibility.countries=[Atlantis]", "eligibility.countries"),
    ("campaign.budget.min_score=1.5", "budget.min_score"),
    ("campaign.model.kind=uplift", "model.kind"),
])
def test_bad_values_fail_before_training(shop, monkeypatch, override, field):
    from training.campaigns import train

    monkeypatch.setattr(train, "fit_at_snapshot", lambda *a, **k: pytest.fail("training started"))
    over = ("campaign.model.log_features=[]",) if "features" in override else ()
    with pytest.raises(CampaignConfigError) as e:
        train.run(cfg(shop, override, *over))
    assert e.value.field == field
