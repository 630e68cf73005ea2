"""Campaign readout: ``python -m serving.campaigns.evaluate campaign=<name> [outcomes=events|simulate|<file>]``.

Reads the audience (``campaign.job.out_dir``, from ``serving.campaigns.build_audience``) and each
audience user's outcome (``serving.campaigns.outcomes``): by default from the processed events in the
attribution window after that user's ``send_at``, treatment and control alike; ``outcomes=<file>``
reads a parquet/csv file, ``outcomes=simulate`` a documented simulation (not evidence). Then
``serving.campaigns.readout`` (effects with Newcombe/Welch intervals, ROI on margin) and
``serving.campaigns.report``; writes ``campaign.job.report_dir`` (report.html, PNGs, results.json,
manifest.json) atomically. Prints one line per metric and, as its last line, one JSON object.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Iterable

import hydra
import pandas as pd
from omegaconf import DictConfig

from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.cli import run_or_exit
from serving.campaigns.outcomes import Outcomes, load_outcomes, outcomes_from_processed, simulate_outcomes
from serving.campaigns.readout import evaluate
from serving.campaigns.report import plots, render_html
from serving.campaigns.spec import CampaignConfig, from_hydra

log = logging.getLogger(__name__)


def read_outcomes(campaign: CampaignConfig, audience: pd.DataFrame, seed: int) -> Outcomes:
    """``campaign.job.outcomes``: null or ``events`` (processed events), ``simulate``, or a file."""
    how = campaign.job.outcomes or "events"
    if how == "events":
        return outcomes_from_processed(audience, campaign.job.processed, campaign)
    if how == "simulate":
        profiles = pd.read_parquet(campaign.job.profiles, columns=["user_key", "frequency", "monetary"])
        return simulate_outcomes(audience, profiles, campaign, seed)
    return load_outcomes(how)


def outcome_warnings(outcomes: Outcomes) -> list[str]:
    """What the reader must know about the outcomes: windows not over yet, audience users without events."""
    info, out = outcomes.info, []
    if info.get("users_with_incomplete_window"):
        out.append(f"{info['users_with_incomplete_window']} audience users' outcome windows run past the last event "
                   f"({info['last_event']}): their outcomes are incomplete; read the campaign again later")
    if info.get("audience_users_unknown_to_events"):
        out.append(f"{info['audience_users_unknown_to_events']} audience users are unknown to the events "
                   "(counted as no response)")
    return out


def write_report(campaign: CampaignConfig, res: dict, outcomes: Outcomes, steps: list[dict], inputs: dict,
                 extra: dict[str, pd.DataFrame] | None = None) -> dict:
    """``campaign.job.report_dir``: report.html + PNGs, outcomes.parquet, results.json, manifest.json (and
    ``extra`` tables as ``<name>.parquet``)."""
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    public.update(outcomes_source=outcomes.source, outcomes_info=outcomes.info,
                  simulated_outcomes=outcomes.source == "simulate", warnings=outcome_warnings(outcomes))
    res["warnings"] = public["warnings"]
    where = outcomes.info.get("path") or outcomes.info.get("processed") or f"seed {outcomes.info.get('seed')}"
    with atomic_dir(campaign.job.report_dir) as tmp:
        images = plots(res, steps, tmp)
        (tmp / "report.html").write_text(render_html(campaign, res, images, outcomes.source, str(where)))
        outcomes.frame.to_parquet(tmp / "outcomes.parquet", index=False)
        for name, frame in (extra or {}).items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        write_json(tmp / "results.json", public)
        write_json(tmp / "manifest.json", {"campaign_id": campaign.id, "outcomes_source": outcomes.source,
                                           "inputs": {**inputs, "outcomes": file_sha256(tmp / "outcomes.parquet")},
                                           "counts": {"treatment": res["n_treatment"], "control": res["n_control"]},
                                           "backtest": res["backtest"], "code_version": code_version(), "device": "cpu"})
    public["report"] = str(Path(campaign.job.report_dir) / "report.html")
    return public


def run(cfg: DictConfig) -> dict:
    campaign = from_hydra(cfg.campaign)
    aud_dir = Path(campaign.job.out_dir)
    if not (aud_dir / "audience.parquet").is_file():
        raise FileNotFoundError(f"{aud_dir / 'audience.parquet'} not found: run "
                                f"`python -m serving.campaigns.build_audience campaign={campaign.id}` first")
    audience = pd.read_parquet(aud_dir / "audience.parquet")
    aud_manifest = read_json(aud_dir / "manifest.json")
    outcomes = read_outcomes(campaign, audience, int(cfg.seed))
    res = evaluate(audience, outcomes.frame, campaign, backtest=bool(aud_manifest.get("backtest")))
    return write_report(campaign, res, outcomes, aud_manifest["steps"],
                        {"audience": file_sha256(aud_dir / "audience.parquet")})


def rewrite_argv(argv: Iterable[str]) -> list[str]:
    """``outcomes=<x>`` -> ``campaign.job.outcomes=<x>`` (the campaign job setting)."""
    return [("campaign.job.outcomes=" + a.split("=", 1)[1]) if a.startswith("outcomes=") else a for a in argv]


def summary(res: dict) -> str:
    """The readout's lines for a terminal, then one JSON object as the last line."""
    lines = [f"{e['metric']:22s} T {e['treatment']:.4f}  C {e['control']:.4f}  uplift {e['uplift']:+.4f} "
             f"[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}] p={e['p_value']:.3g}" for e in res["effects"]]
    roi = "n/a" if res["roi"] is None else f"{res['roi']:.2f}"
    lines.append(f"incremental revenue {res['incremental_revenue']:.2f}, incremental margin {res['incremental_margin']:.2f}, "
                 f"cost {res['costs']['total']:.2f}, ROI {roi} (outcomes: {res['outcomes_source']}"
                 + (", SIMULATED" if res["simulated_outcomes"] else "") + f"); report {res['report']}")
    if res.get("aa_check"):
        lines.append(res["aa_check"]["statement"])
    lines += [f"WARNING: {w}" for w in res.get("warnings", [])]
    conv = next(e for e in res["effects"] if e["metric"] == "conversion")
    lines.append(json.dumps({"n_treatment": res["n_treatment"], "n_control": res["n_control"],
                             "conversion_uplift": conv["uplift"], "ci_low": conv["ci_low"], "ci_high": conv["ci_high"],
                             "p_value": conv["p_value"], "roi": res["roi"], "outcomes": res["outcomes_source"],
                             "aa_check_passed": (res.get("aa_check") or {}).get("passed")}, sort_keys=True))
    return "\n".join(lines)


@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("evaluate", run, cfg)
    print(summary(res))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *rewrite_argv(sys.argv[1:])]
    main()
