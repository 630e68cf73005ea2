"""Contract 5: ``load_campaign_scorer(bundle, id)`` for the service's campaign scoring endpoint."""
from __future__ import annotations

import numpy as np
import pandas as pd

from serving.campaign_scoring import load_campaign_scorer
from tests.campaign import scripts_loader
from tests.campaign.conftest import tiny_model
from training.campaign import save_campaign_model


def _publish(tmp_path, campaign, profiles):
    build = scripts_loader.load("build_audience")
    model = tiny_model(campaign.model.features)
    model_dir = tmp_path / "model"
    save_campaign_model(model_dir, model.ensemble, model.features, "response")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = {"snapshot_date": "2011-12-10", "model": {"metrics": {"holdout_auc": 0.8}}}
    build.write_bundle_campaign(bundle, campaign, model_dir, profiles.iloc[:500], manifest)
    return bundle, model


def test_scorer_scores_known_users_and_none_for_unknown(tmp_path, campaign, profiles):
    bundle, model = _publish(tmp_path, campaign, profiles)
    scorer = load_campaign_scorer(bundle, campaign.id)
    assert scorer is not None and scorer.campaign_id == campaign.id
    keys = profiles["user_key"].astype(str).tolist()[:3]
    out = scorer.score([*keys, "no-such-user"])
    assert out[3] is None and all(isinstance(v, float) for v in out[:3])
    expect = model.score_matrix(model.feature_matrix(profiles.iloc[:3]))
    assert np.allclose(out[:3], expect, atol=1e-6)
    feats = pd.read_parquet(bundle / "campaigns" / campaign.id / "features.parquet")
    assert list(feats.columns) == ["user_key", *campaign.model.features]     # no clear-text ids


def test_unknown_or_malicious_campaign_ids_give_none(tmp_path, campaign, profiles):
    bundle, _ = _publish(tmp_path, campaign, profiles)
    for bad in ("nope", "../bundle", "WINBACK", "", "winback/../winback"):
        assert load_campaign_scorer(bundle, bad) is None
    assert load_campaign_scorer(tmp_path / "missing", campaign.id) is None
