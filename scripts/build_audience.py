"""Build a campaign audience: ``python scripts/build_audience.py campaign=<name> [--ray-address ADDR]``.

1. Validates the campaign YAML (``serving.campaign_config``): a bad field fails here, before any work.
2. Trains the campaign's response model on the processed events (profiles at an earlier snapshot,
   label = objective met within ``objective.within_days``; ``training.campaign``).
3. Scores every eligible profile batch-wise (CUDA when present), draws the control group, applies the
   budget and picks channel, send time and offer (``serving.audience``); with ``--ray-address`` the
   filters and scoring run in Ray Data on that cluster.
4. Writes ``${paths.artifacts}/campaigns/<id>/`` atomically: ``audience.parquet`` (user_key, score,
   group, channel, send_at, offer, segment, cost), ``model/`` and ``manifest.json`` (count after every
   step, config, input hashes, code version, device); appends the treated users to the contact log
   (frequency caps of later campaigns); and, when a bundle exists, writes the model and the users'
   features into ``<bundle>/campaigns/<id>/`` for ``POST /v1/campaigns/{id}/score``.

Only pseudonymised ``user_key``s are written.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.processed import load_events, load_items, load_manifest, load_users
from serving.audience import build_audience, check_profiles, model_scorer, score_with_ray
from serving.campaign_config import CampaignConfig, from_hydra, to_dict
from serving.campaign_scoring import FEATURES_FILE, CampaignModel, resolve_device
from training.campaign import fit_response_model, response_training_table, save_campaign_model

log = logging.getLogger("build_audience")
CONTACT_COLUMNS = ("user_key", "campaign_id", "channel", "send_at")


@dataclass
class BuildResult:
    out_dir: Path
    audience: pd.DataFrame
    manifest: dict
    bundle_dir: Path | None


def load_profiles(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profiles {path} not found: run `python -m features.profile data=<name>` first")
    return pd.read_parquet(path)


def recent_contacts(log_path: str | Path, campaign: CampaignConfig, send_date: pd.Timestamp) -> set[str]:
    """Users another campaign contacted within the frequency cap before ``send_date``."""
    cap = campaign.exclusions.frequency_cap_days
    path = Path(log_path)
    if cap is None or not path.is_file():
        return set()
    contacts = pd.read_parquet(path)
    sent = pd.to_datetime(contacts["send_at"], utc=True)
    recent = (contacts["campaign_id"] != campaign.id) & (sent > send_date - pd.Timedelta(days=cap)) & (sent <= send_date + pd.Timedelta(days=1))
    return set(contacts.loc[recent, "user_key"].astype(str))


def recent_category_buyers(processed: Path, campaign: CampaignConfig, snapshot: pd.Timestamp) -> set[str]:
    days = campaign.exclusions.bought_category_within_days
    if days is None:
        return set()
    ev = load_events(processed, columns=["user_id", "item_id", "event", "ts"])
    items = load_items(processed)
    users = load_users(processed)
    cat_items = items.loc[items["category"] == campaign.objective.category, "item_id"]
    hit = ev[(ev["event"] == campaign.objective.event) & ev["item_id"].isin(cat_items)
             & (ev["ts"] >= snapshot - pd.Timedelta(days=days)) & (ev["ts"] < snapshot)]
    return set(users.loc[users["user_id"].isin(hit["user_id"].unique()), "user_key"].astype(str))


def update_contact_log(log_path: str | Path, campaign: CampaignConfig, audience: pd.DataFrame) -> None:
    """Replace this campaign's rows in the contact log with its treated users (atomic rename)."""
    path = Path(log_path)
    treated = audience[audience["group"] == "treatment"]
    new = pd.DataFrame({"user_key": treated["user_key"].astype("string"), "campaign_id": campaign.id,
                        "channel": treated["channel"].astype("string"), "send_at": treated["send_at"]})
    if path.is_file():
        old = pd.read_parquet(path)
        new = pd.concat([old[old["campaign_id"] != campaign.id], new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    new.to_parquet(tmp, index=False)
    tmp.replace(path)


def latest_bundle(campaign: CampaignConfig) -> Path | None:
    if campaign.job.bundle:
        p = Path(campaign.job.bundle)
        if not p.is_dir():
            raise FileNotFoundError(f"bundle {p} (setting bundle) does not exist")
        return p
    latest = Path(campaign.job.bundles) / "LATEST"
    if not latest.is_file():
        return None
    p = Path(campaign.job.bundles) / latest.read_text().strip()
    return p if p.is_dir() else None


def write_bundle_campaign(bundle: Path, campaign: CampaignConfig, model_dir: Path, profiles: pd.DataFrame,
                          manifest: dict) -> Path:
    """``<bundle>/campaigns/<id>/``: model files, users' feature snapshot (user_key + features), manifest."""
    meta = read_json(model_dir / "model.json")
    feats = profiles[["user_key", *meta["features"]]].copy()
    feats["user_key"] = feats["user_key"].astype("string")
    final = bundle / "campaigns" / campaign.id
    with atomic_dir(final) as tmp:
        for f in model_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
        feats.to_parquet(tmp / FEATURES_FILE, index=False)
        write_json(tmp / "manifest.json", {
            "campaign_id": campaign.id, "name": campaign.name, "kind": meta["kind"], "features": meta["features"],
            "n_users": int(len(feats)), "snapshot_date": manifest["snapshot_date"],
            "model_metrics": manifest["model"]["metrics"], "code_version": code_version(),
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir())},
        })
    return final


def run(cfg: DictConfig) -> BuildResult:
    campaign = from_hydra(cfg.campaign)          # bad YAML fails here, before any scoring
    t_start = time.perf_counter()
    profiles = load_profiles(campaign.job.profiles)
    check_profiles(profiles, campaign)
    device = resolve_device(campaign.job.device)
    processed = Path(campaign.job.processed)
    pm = load_manifest(processed)
    pcfg = OmegaConf.to_container(cfg.profile, resolve=True)
    snapshot = pd.to_datetime(profiles["snapshot_date"], utc=True).max()
    pcfg["snapshot_date"] = str(snapshot.date())   # train on the same "now" the profiles were cut at

    if campaign.model.kind != "response":
        raise ValueError(f"campaign.model.kind={campaign.model.kind!r}: uplift models need treatment/control "
                         "outcomes, which a retail event log does not have; use 'response' here (the uplift "
                         "network is benchmarked on Hillstrom: scripts/bench_uplift.py)")
    t0 = time.perf_counter()
    events, items, users = load_events(processed), load_items(processed), load_users(processed)
    table, table_info = response_training_table(events, items, users, pcfg, campaign.objective, int(cfg.seed),
                                                time_kind=pm.get("time_kind", "timestamp"))
    ens, metrics = fit_response_model(table, campaign.model, int(cfg.seed))
    train_s = time.perf_counter() - t0
    log.info("campaign model: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})

    from serving.audience import _send_date  # same rule as the pipeline
    send_date = _send_date(profiles, campaign)
    contacts = recent_contacts(campaign.job.contact_log, campaign, send_date)
    buyers = recent_category_buyers(processed, campaign, snapshot)

    out_dir = Path(campaign.job.out_dir)
    with atomic_dir(out_dir) as tmp:
        model_dir = tmp / "model"
        save_campaign_model(model_dir, ens, list(campaign.model.features), campaign.model.kind,
                            {"campaign_id": campaign.id, "metrics": metrics, "training": table_info})
        model = CampaignModel.load(model_dir)
        if campaign.job.ray_address:
            result = score_with_ray(profiles, campaign, str(model_dir.resolve()), campaign.job.ray_address, contacts, buyers)
            engine = f"ray:{campaign.job.ray_address}"
        else:
            result = build_audience(profiles, campaign, model_scorer(model, device, campaign.job.batch_size), contacts, buyers)
            engine = "local"
        aud = result.audience
        aud.to_parquet(tmp / "audience.parquet", index=False)
        treat = aud[aud["group"] == "treatment"]
        manifest = {
            "campaign_id": campaign.id, "campaign": to_dict(campaign), "data": campaign.data,
            "steps": result.steps, "counts": {"audience": int(len(aud)), "treatment": int(len(treat)),
                                              "control": int(len(aud) - len(treat))},
            "channels": treat["channel"].astype(str).value_counts().to_dict(),
            "treatment_cost": float(treat["cost"].sum()),
            "send_time": {"local_zones": aud["timezone"].astype(str).value_counts().to_dict(),
                          "zone_source": ("profiles column timezone (default where null: send_time.default_timezone)"
                                          if "timezone" in profiles.columns else
                                          "send_time.default_timezone (the profiles have no timezone column)"),
                          "send_at": "UTC"},
            "snapshot_date": str(snapshot), "send_date": result.send_date,
            "model": {"kind": campaign.model.kind, "features": list(campaign.model.features), "metrics": metrics,
                      "training": table_info, "train_seconds": train_s},
            "inputs": {"profiles": {"path": str(campaign.job.profiles), "sha256": file_sha256(campaign.job.profiles)},
                       "processed_manifest": file_sha256(processed / "manifest.json"),
                       "contact_log_users_capped": len(contacts)},
            "device": device, "engine": engine, "timings_s": result.timings_s,
            "code_version": code_version(), "seconds": time.perf_counter() - t_start,
        }
        write_json(tmp / "manifest.json", manifest)
    update_contact_log(campaign.job.contact_log, campaign, aud)
    bundle_dir = None
    bundle = latest_bundle(campaign) if campaign.job.write_bundle else None
    if bundle is not None:
        bundle_dir = write_bundle_campaign(bundle, campaign, out_dir / "model", profiles, manifest)
        log.info("campaign model written into %s", bundle_dir)
    else:
        log.info("no bundle found under %s: campaign model not published to serving", campaign.job.bundles)
    log.info("audience %s: %s", campaign.id, " -> ".join(f"{s['step']}={s['users']}" for s in result.steps))
    return BuildResult(out_dir, aud, manifest, bundle_dir)


def _rewrite_argv(argv: list[str]) -> list[str]:
    """``--ray-address ADDR`` / ``--ray-address=ADDR`` -> the Hydra override ``campaign.job.ray_address=ADDR``."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--ray-address" and i + 1 < len(argv):
            out.append(f"campaign.job.ray_address={argv[i + 1]}")
            i += 2
            continue
        if a.startswith("--ray-address="):
            a = "campaign.job.ray_address=" + a.split("=", 1)[1]
        out.append(a)
        i += 1
    return out


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"build_audience: error: {e}", file=sys.stderr)
        sys.exit(2)
    m = res.manifest
    print(f"audience {m['campaign_id']}: {m['counts']['treatment']} treatment + {m['counts']['control']} control "
          f"-> {res.out_dir / 'audience.parquet'}" + (f"; model in {res.bundle_dir}" if res.bundle_dir else ""))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_rewrite_argv(sys.argv[1:])]
    main()
