"""Train a campaign's response model: ``python -m training.campaigns.train campaign=<name>``.

1. Validates the campaign YAML (``serving.campaigns.spec``) and, against the profiles, its targeting
   values and model features: a bad value fails here, naming the field, before any training.
2. Builds the training table (profiles at ``snapshot - objective.within_days``, label = objective met
   in the following ``within_days``; ``training.campaigns.response``) on the processed events, with
   the snapshot the profiles were cut at, and fits the network (held-out AUC and lift@10 % reported).
3. Writes ``campaign.job.model_dir`` (``${paths.artifacts}/campaign_models/<id>/``) atomically:
   ``model.pt``, ``model.json`` (metrics, training window) and ``manifest.json``.

``python -m serving.campaigns.build_audience`` then scores with it; ``scripts/build_audience.py``
runs both.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.artifacts import atomic_dir, file_sha256
from features.cli import run_or_exit
from features.processed import load_events, load_items, load_manifest, load_users
from models.uplift import CampaignEnsemble
from serving.campaigns.build_audience import known_segments, load_profiles
from serving.campaigns.eligibility import check_profiles, check_targeting
from serving.campaigns.scoring import save_campaign_model
from serving.campaigns.spec import CampaignConfig, CampaignConfigError, from_hydra
from training.campaigns.response import fit_response_model, response_training_table

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    training: dict[str, Any]
    seconds: float


def check_trainable(campaign: CampaignConfig) -> None:
    """Only response models train on a retail event log (uplift needs treatment and control outcomes)."""
    if campaign.model.kind != "response":
        raise CampaignConfigError("model.kind", f"{campaign.model.kind!r}: uplift models need treatment/control "
                                  "outcomes, which a retail event log does not have; use 'response' here (the "
                                  "uplift network is benchmarked on Hillstrom: scripts/bench_uplift.py)")


def fit_at_snapshot(processed: Path, campaign: CampaignConfig, pcfg: dict[str, Any], snapshot: pd.Timestamp,
                    seed: int) -> tuple[CampaignEnsemble, dict[str, Any], dict[str, Any]]:
    """The response model as of ``snapshot``: it sees only events before it. Returns (ensemble,
    held-out metrics, training window)."""
    pm = load_manifest(processed)
    pcfg = {**pcfg, "snapshot_date": str(snapshot.date())}
    events, items, users = load_events(processed), load_items(processed), load_users(processed)
    table, info = response_training_table(events, items, users, pcfg, campaign.objective, seed,
                                          time_kind=pm.get("time_kind", "timestamp"))
    ens, metrics = fit_response_model(table, campaign.model, seed)
    return ens, metrics, info


def run(cfg: DictConfig) -> TrainResult:
    campaign = from_hydra(cfg.campaign)          # a bad YAML fails here, before any data is read
    check_trainable(campaign)
    profiles = load_profiles(campaign.job.profiles)
    check_profiles(profiles, campaign)           # model.features must be profile columns
    pcfg = OmegaConf.to_container(cfg.profile, resolve=True)
    check_targeting(profiles, campaign, known_segments(pcfg))
    snapshot = pd.to_datetime(profiles["snapshot_date"], utc=True).max()
    t0 = time.perf_counter()
    ens, metrics, info = fit_at_snapshot(Path(campaign.job.processed), campaign, pcfg, snapshot, int(cfg.seed))
    seconds = time.perf_counter() - t0
    log.info("campaign model %s: %s", campaign.id,
             {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    with atomic_dir(campaign.job.model_dir) as tmp:
        save_campaign_model(tmp, ens, list(campaign.model.features), campaign.model.kind, {
            "campaign_id": campaign.id, "metrics": metrics, "training": info, "train_seconds": seconds,
            "profiles_sha256": file_sha256(campaign.job.profiles),
            "processed_manifest_sha256": file_sha256(Path(campaign.job.processed) / "manifest.json")})
    return TrainResult(Path(campaign.job.model_dir), metrics, info, seconds)


@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("training.campaigns.train", run, cfg)
    print(f"campaign model -> {res.model_dir} (holdout AUC {res.metrics['holdout_auc']:.3f}, "
          f"lift@10% {res.metrics['holdout_lift@10']:.2f})")


if __name__ == "__main__":
    main()
