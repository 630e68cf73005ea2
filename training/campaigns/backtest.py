"""Campaign backtest on past data: ``python -m training.campaigns.backtest campaign=<name> campaign.job.backtest_cutoff=YYYY-MM-DD``.

Replays a campaign as if it had been built at the cut-off date, from the processed events alone:

1. profiles as of the cut-off (``features.profiles``: only events before it);
2. the campaign's response model trained as of the cut-off (label window before it too);
3. the audience with its random control group (``serving.campaigns.audience``), send times on the
   day after the cut-off;
4. each audience user's outcome from the real events after their ``send_at`` (attribution window),
   treatment and control alike (``serving.campaigns.outcomes``);
5. the readout (``serving.campaigns.readout``) in backtest mode: nothing was sent, so treatment and
   control differ only by chance; every interval should cover zero (an A/A check on real data) and
   the readout says whether it does. No discount or channel cost is counted. The same real outcomes
   split again into 200 random control groups measure how often an interval excludes zero without
   an effect (``aa_calibration``; about 5 % when the intervals are calibrated).

Writes ``<campaign.job.report_dir>-backtest-<cutoff>/`` (report.html, audience.parquet,
outcomes.parquet, results.json, manifest.json) atomically; prints the readout and, as its last line,
one JSON object.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.cli import run_or_exit
from features.processed import load_events, load_items, load_manifest, load_users
from features.profiles.build import build_profiles
from serving.campaigns.audience import build_audience, model_scorer
from serving.campaigns.build_audience import known_segments
from serving.campaigns.eligibility import check_profiles, check_targeting
from serving.campaigns.evaluate import summary, write_report
from serving.campaigns.outcomes import outcomes_from_events
from serving.campaigns.readout import aa_false_positive_rate, evaluate
from serving.campaigns.scoring import CampaignModel
from serving.campaigns.spec import CampaignConfigError, from_hydra, to_dict
from training.campaigns.train import check_trainable, fit_at_snapshot

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    campaign = from_hydra(cfg.campaign)
    check_trainable(campaign)
    if campaign.job.backtest_cutoff is None:
        raise CampaignConfigError("job.backtest_cutoff", "is required for a backtest (YYYY-MM-DD, a date inside the data)")
    cutoff = pd.Timestamp(campaign.job.backtest_cutoff, tz="UTC")
    processed = Path(campaign.job.processed)
    pm = load_manifest(processed)
    events, items, users = load_events(processed), load_items(processed), load_users(processed)
    last = events["ts"].max()
    if not events["ts"].min() < cutoff < last:
        raise CampaignConfigError("job.backtest_cutoff", f"{cutoff.date()} is not inside the data "
                                  f"({events['ts'].min().date()} .. {last.date()})")
    seed = int(cfg.seed)
    pcfg = OmegaConf.to_container(cfg.profile, resolve=True)
    pcfg = {**pcfg, "snapshot_date": str(cutoff.date()), "flows_from": None}
    profiles = build_profiles(events, items, users, pcfg, seed, time_kind=pm.get("time_kind", "timestamp")).profiles
    profiles = profiles.reset_index()
    check_profiles(profiles, campaign)
    check_targeting(profiles, campaign, known_segments(pcfg))
    ens, metrics, info = fit_at_snapshot(processed, campaign, pcfg, cutoff, seed)
    model = CampaignModel(ens, list(campaign.model.features), campaign.model.kind)
    result = build_audience(profiles, campaign, model_scorer(model, campaign.job.device, campaign.job.batch_size))
    for w in result.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    outcomes = outcomes_from_events(result.audience, events, users, campaign,
                                    items if campaign.objective.category is not None else None)
    outcomes.info["processed"] = str(processed)
    res = evaluate(result.audience, outcomes.frame, campaign, backtest=True)
    res["backtest_cutoff"] = str(cutoff.date())
    res["model_metrics"], res["model_training"] = metrics, info
    res["steps"] = result.steps
    res["aa_calibration"] = aa_false_positive_rate(res["_frame"], campaign.control.fraction, draws=200, seed=seed)
    report_dir = f"{campaign.job.report_dir}-backtest-{cutoff.date()}"
    campaign = campaign.replace(job={"report_dir": report_dir})
    public = write_report(campaign, res, outcomes, result.steps,
                          {"processed_manifest": str(processed / "manifest.json"), "campaign": to_dict(campaign)},
                          extra={"audience": result.audience})
    return public


@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("training.campaigns.backtest", run, cfg)
    print(f"backtest of {cfg.campaign.id} as of {res['backtest_cutoff']}: audience {res['n_treatment']} treatment "
          f"+ {res['n_control']} control; outcomes from the events after send_at")
    cal = res["aa_calibration"]
    print(f"A/A calibration: {cal['draws']} random re-splits of the same real outcomes; intervals excluding zero: "
          + ", ".join(f"{k} {v:.3f}" for k, v in cal["false_positive_rate"].items()) + f" (expected about {cal['alpha']})")
    print(summary(res))


if __name__ == "__main__":
    main()
