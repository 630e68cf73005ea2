"""Contract 5: ``load_campaign_scorer(bundle, id)`` for the service's campaign scoring endpoint."""
from __future__ import annotations

import numpy as np
import pandas as pd

from serving.campaigns.build_audience import write_bundle_campaign
from serving.campaigns.scoring import load_campaign_scorer, save_campaign_model
from tests.serving.campaigns.conftest import tiny_model


def _publish(tmp_path, campaign, profiles):
    model = tiny_model(campaign.model.features)
    model_dir = tmp_path / "model"
    save_campaign_model(model_dir, model.ensemble, model.features, "response")
    bundle = tmp_path / "bundle"
    manifest = {"snapshot_date": "2011-12-10", "model": {"metrics": {"holdout_auc": 0.8}}}
    write_bundle_campaign(bundle / "campaigns" / campaign.id, campaign, model_dir, profiles.iloc[:500], manifest)
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


def test_cuda_request_without_a_gpu_falls_back_to_cpu_with_equal_scores():
    import numpy as np
    import torch

    from tests.serving.campaigns.conftest import tiny_model

    model = tiny_model(["a", "b", "c"])
    x = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    cpu = model.score_matrix(x, device="cpu", batch_size=300)
    other = model.score_matrix(x, device="cuda", batch_size=300)   # cuda when present, else the CPU
    np.testing.assert_allclose(other, cpu, rtol=1e-4, atol=1e-5)
    dev = next(model.ensemble.parameters()).device
    assert all(b.device == dev for b in model.ensemble.buffers())   # model and its preprocessing together
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_preprocessing_fits_on_the_models_own_device():
    """``set_preprocessing`` after the network moved (e.g. to CUDA) must not mix devices."""
    import numpy as np
    import torch

    from models.uplift import CampaignNet

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = CampaignNet(3, 8, 2).to(dev)
    x = np.abs(np.random.default_rng(1).normal(size=(200, 3))).astype(np.float32)
    net.set_preprocessing(x, [True, False, False])
    assert net.mean.device.type == dev and net.log_mask.device.type == dev
    assert torch.isfinite(net.score(torch.from_numpy(x).to(dev))).all()
