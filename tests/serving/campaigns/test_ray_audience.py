"""The Ray Data path (``--ray-address``) gives the same audience as the single-process pipeline."""
from __future__ import annotations

import pytest

from serving.campaigns.audience import build_audience, model_scorer
from serving.campaigns.ray_audience import score_with_ray
from serving.campaigns.scoring import save_campaign_model
from tests.serving.campaigns.conftest import tiny_model

pytestmark = pytest.mark.ray


def test_ray_data_path_matches_local(ray_local, tmp_path, campaign, profiles):
    c = campaign.replace(job={"batch_size": 5000, "device": "cpu"})
    model = tiny_model(c.model.features)
    save_campaign_model(tmp_path, model.ensemble, model.features, "response")
    remote = score_with_ray(profiles, c, str(tmp_path), "auto")
    local = build_audience(profiles, c, model_scorer(model, "cpu"))
    assert remote.steps == local.steps
    assert (remote.audience["user_key"].astype(str).values == local.audience["user_key"].astype(str).values).all()
    assert (remote.audience["group"].astype(str).values == local.audience["group"].astype(str).values).all()
