"""Uplift metrics (own copies vs scikit-uplift), the campaign network, saving and loading it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.uplift import CampaignEnsemble, CampaignNet, qini_auc_score, qini_curve, uplift_at_k
from serving.campaigns.scoring import CampaignModel, save_campaign_model
from serving.campaigns.spec import NetSettings
from training.campaigns.response import train_campaign_net


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_metrics_match_scikit_uplift(seed, ties):
    sklift = pytest.importorskip("sklift.metrics")
    rng = np.random.default_rng(seed)
    n = 3000
    t = rng.integers(0, 2, n)
    u = rng.normal(size=n)
    u = np.round(u, 1) if ties else u
    y = (rng.random(n) < 0.1 + 0.1 * t * (u > 0)).astype(int)
    assert uplift_at_k(y, u, t, 0.3) == pytest.approx(sklift.uplift_at_k(y, u, t, strategy="overall", k=0.3), abs=1e-12)
    assert qini_auc_score(y, u, t) == pytest.approx(sklift.qini_auc_score(y, u, t), abs=1e-12)
    x, v = qini_curve(y, u, t)
    xs, vs = sklift.qini_curve(y, u, t)
    assert np.allclose(x, xs) and np.allclose(v, vs)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="binary"):
        uplift_at_k([0, 2, 1], [0.1, 0.2, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="length"):
        qini_auc_score([0, 1], [0.1], [0, 1])


def test_two_head_net_learns_a_planted_uplift():
    """Treatment helps only when x0 > 0: the network must rank those users first."""
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=(n, 3)).astype(np.float32)
    t = rng.integers(0, 2, n)
    p = 0.1 + 0.3 * t * (x[:, 0] > 0)
    y = (rng.random(n) < p).astype(int)
    ens, info = train_campaign_net(x, y, t, NetSettings(hidden=16, epochs=6, batch_size=256, seeds=1), [False] * 3, seed=0)
    with torch.no_grad():
        u = ens.score(torch.from_numpy(x)).numpy()
    assert np.corrcoef(u, x[:, 0] > 0)[0, 1] > 0.6
    assert uplift_at_k(y, u, t, 0.3) > 0.2 and info["valid_bce"] > 0


def test_single_class_labels_are_rejected():
    with pytest.raises(ValueError, match="single class"):
        train_campaign_net(np.zeros((10, 2)), np.zeros(10), None, NetSettings(seeds=1, epochs=1), [False, False])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    ens = CampaignEnsemble([CampaignNet(3, 8, 2) for _ in range(2)]).eval()
    x = np.random.default_rng(0).lognormal(size=(50, 3)).astype(np.float32)
    for m in ens.members:
        m.set_preprocessing(x, [True, False, False])
    save_campaign_model(tmp_path, ens, ["a", "b", "c"], "uplift", {"campaign_id": "demo"})
    loaded = CampaignModel.load(tmp_path)
    assert loaded.kind == "uplift" and loaded.features == ["a", "b", "c"] and loaded.meta["campaign_id"] == "demo"
    with torch.no_grad():
        expect = ens.score(torch.from_numpy(x)).numpy()
    assert np.allclose(loaded.score_matrix(x), expect, atol=1e-6)
    x_nan = x.copy()
    x_nan[0, 1] = np.nan                                       # missing value -> imputed, not NaN
    assert np.isfinite(loaded.score_matrix(x_nan)).all()
