"""Fixtures for the campaign tests: composed campaign configs, synthetic profiles, a tiny model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[3]
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def campaign_raw():
    """The winback campaign as a plain dict (edit a copy to make it invalid)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(make_cfg("campaign=winback").campaign, resolve=True)


@pytest.fixture(scope="session")
def campaign(campaign_raw):
    from serving.campaigns.spec import parse_campaign

    return parse_campaign(campaign_raw)


@pytest.fixture(scope="session")
def profiles():
    from serving.campaigns.synthetic import synthetic_profiles

    return synthetic_profiles(20_000, seed=1)


def tiny_model(features, n_heads=1, seed=0):
    from models.uplift import CampaignEnsemble, CampaignNet
    from serving.campaigns.scoring import CampaignModel

    torch.manual_seed(seed)
    ens = CampaignEnsemble([CampaignNet(len(features), 8, n_heads) for _ in range(2)]).eval()
    return CampaignModel(ens, list(features), "response" if n_heads == 1 else "uplift")
