"""Build a campaign audience: ``python -m serving.campaigns.build_audience campaign=<name> [campaign.job.ray_address=auto]``.

1. Validates the campaign YAML (``serving.campaigns.spec``), then, against the profiles, its model
   features and targeting values (an unknown segment or country fails listing the known ones), all
   before any scoring.
2. Loads the campaign model (``campaign.job.model_dir``): a response model trained by
   ``python -m training.campaigns.train``, or for ``model.kind: uplift`` a past campaign's run folder
   from ``python -m training.uplift``.
3. Scores every eligible profile batch-wise (CUDA when present), draws the control group, applies the
   budget and picks channel, send time and offer (``serving.campaigns.audience``); with
   ``campaign.job.ray_address`` the filters and scoring run in Ray Data on that cluster.
4. Writes ``campaign.job.out_dir`` (``${paths.artifacts}/campaigns/<id>/``) atomically:
   ``audience.parquet`` (user_key, score, group, channel, send_at, timezone, offer, segment, cost),
   ``model/`` (the model used) and ``manifest.json`` (count after every step, warnings, config, input
   hashes, code version, device; for uplift campaigns ``uplift``: sleeping dogs, expected incremental
   conversions, cost and profit, offer levels, the expected profit curve against budget, also drawn
   in ``report.html``); puts the treated users in the contact log (frequency caps of later
   campaigns); and, when a bundle exists, publishes a new bundle version that adds
   ``campaigns/<id>/`` (model + the users' features) for ``POST /v1/campaigns/{id}/score``.

An empty audience is written (it is a valid answer) but warned about loudly: log, manifest
``warnings`` and a line on stderr. Only pseudonymised ``user_key``s are written.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.cli import run_or_exit
from features.privacy import check_artifact_key
from features.processed import load_events, load_items, load_users
from features.tombstones import drop_tombstoned, tombstone_dir
from serving.audit import audit_event, cli_actor
from serving.campaigns.audience import AudienceResult, build_audience, model_scorer, send_date_of
from serving.campaigns import uplift_model
from serving.campaigns.eligibility import check_profiles, check_targeting
from serving.campaigns.report import audience_report
from serving.campaigns.scoring import FEATURES_FILE, MANIFEST_FILE, META_FILE, CampaignModel, resolve_device
from serving.campaigns.spec import CampaignConfig, CampaignConfigError, from_hydra, to_dict

log = logging.getLogger(__name__)
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


def known_segments(pcfg: dict[str, Any]) -> list[str]:
    """The named segments the profile config defines (present in the data or not)."""
    names = [str(r["name"]) for r in pcfg.get("named_segments") or [] if isinstance(r, dict) and "name" in r]
    default = pcfg.get("default_named_segment")
    return names + ([str(default)] if default else [])


def recent_contacts(log_path: str | Path, campaign: CampaignConfig, send_date: pd.Timestamp) -> set[str]:
    """Users another campaign contacted within the frequency cap before ``send_date``."""
    cap = campaign.exclusions.frequency_cap_days
    path = Path(log_path)
    if cap is None or not path.is_file():
        return set()
    contacts = pd.read_parquet(path)
    sent = pd.to_datetime(contacts["send_at"], utc=True)
    recent = ((contacts["campaign_id"] != campaign.id) & (sent > send_date - pd.Timedelta(days=cap))
              & (sent <= send_date + pd.Timedelta(days=1)))
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


def load_trained_model(campaign: CampaignConfig) -> CampaignModel:
    """The model ``training.campaigns.train`` wrote; it must read the features the spec names."""
    folder = Path(campaign.job.model_dir)
    if campaign.model.kind == "uplift" and not uplift_model.is_run(folder):
        raise FileNotFoundError(f"uplift model {folder} not found: train it on a past campaign with "
                                f"`python -m training.uplift ... out_dir={folder}` first")
    if not (folder / META_FILE).is_file() and not uplift_model.is_run(folder):
        raise FileNotFoundError(f"campaign model {folder} not found: run `python -m training.campaigns.train "
                                f"campaign={campaign.id}` first")
    model = CampaignModel.load(folder)
    if campaign.model.kind == "uplift" and model.kind == "uplift":
        if set(model.features) != set(campaign.model.features):      # a table model keeps its own column order
            raise CampaignConfigError("model.features", f"the uplift model in {folder} reads {sorted(model.features)}, "
                                      f"the spec names {sorted(campaign.model.features)}")
        return model
    if list(model.features) != list(campaign.model.features) or model.kind != campaign.model.kind:
        raise CampaignConfigError("model.features", f"the trained model in {folder} reads {model.features} "
                                  f"({model.kind}), the spec names {list(campaign.model.features)} "
                                  f"({campaign.model.kind}): train it again")
    return model


def write_bundle_campaign(folder: Path, campaign: CampaignConfig, model_dir: Path, profiles: pd.DataFrame,
                          manifest: dict) -> None:
    """Fill ``folder`` with a bundle's ``campaigns/<id>/`` content: model files, the users' feature
    snapshot (user_key + features), manifest."""
    if uplift_model.is_run(model_dir):      # the run's manifest is kept under its own name
        model = CampaignModel.load(model_dir)
        meta = {"features": model.features, "kind": model.kind}
    else:
        meta = read_json(model_dir / META_FILE)
    feats = profiles[["user_key", *meta["features"]]].copy()
    feats["user_key"] = feats["user_key"].astype("string")
    folder.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != MANIFEST_FILE:
            shutil.copy2(f, folder / f.name)
        elif uplift_model.is_run(model_dir):
            shutil.copy2(f, folder / uplift_model.RUN_MANIFEST_COPY)
    feats.to_parquet(folder / FEATURES_FILE, index=False)
    write_json(folder / MANIFEST_FILE, {
        "campaign_id": campaign.id, "name": campaign.name, "kind": meta["kind"], "features": meta["features"],
        "n_users": int(len(feats)), "snapshot_date": manifest["snapshot_date"],
        "model_metrics": manifest["model"].get("metrics"), "code_version": code_version(),
        "files": {p.name: file_sha256(p) for p in sorted(folder.iterdir())},
    })


def publish_to_bundle(campaign: CampaignConfig, model_dir: Path, profiles: pd.DataFrame, manifest: dict) -> Path | None:
    """A new bundle version (parent: the configured bundle or ``LATEST``) that adds ``campaigns/<id>/``;
    None when there is no bundle. Published versions are never changed."""
    from serving.bundle import CAMPAIGNS_DIR, BundleError, publish_derived, read_manifest, resolve_bundle_dir

    try:
        parent = resolve_bundle_dir(campaign.job.bundle, campaign.job.bundles)
    except BundleError:
        if campaign.job.bundle:
            raise
        return None
    rel = f"{CAMPAIGNS_DIR}/{campaign.id}"
    campaigns = dict(read_manifest(parent, validate=False).get("campaigns") or {})
    campaigns[campaign.id] = {"snapshot_date": manifest["snapshot_date"], "kind": campaign.model.kind}
    with tempfile.TemporaryDirectory() as staged:
        write_bundle_campaign(Path(staged) / campaign.id, campaign, model_dir, profiles, manifest)
        return publish_derived(parent, add_files={rel: Path(staged) / campaign.id},
                               manifest_updates={"campaigns": campaigns})


def score_audience(profiles: pd.DataFrame, campaign: CampaignConfig, model: CampaignModel, model_dir: Path,
                   contacts: set[str], buyers: set[str]) -> tuple[AudienceResult, str]:
    """The audience, locally or through Ray Data (``job.ray_address``); returns (result, engine)."""
    if campaign.job.ray_address:
        from serving.campaigns.ray_audience import score_with_ray

        return (score_with_ray(profiles, campaign, str(model_dir.resolve()), campaign.job.ray_address, contacts, buyers),
                f"ray:{campaign.job.ray_address}")
    device = resolve_device(campaign.job.device)
    return (build_audience(profiles, campaign, model_scorer(model, device, campaign.job.batch_size), contacts, buyers,
                           model=model), "local")


def run(cfg: DictConfig) -> BuildResult:
    campaign = from_hydra(cfg.campaign)          # bad YAML fails here, before any scoring
    t_start = time.perf_counter()
    profiles = load_profiles(campaign.job.profiles)
    check_artifact_key(campaign.job.profiles, "profiles")           # made with this pseudonymisation key
    artifacts = Path(str(cfg.paths.artifacts)) if "paths" in cfg else None
    profiles, n_forgotten = drop_tombstoned(profiles, "user_key", tombstone_dir(artifacts))  # forgotten users
    check_profiles(profiles, campaign)
    check_targeting(profiles, campaign, known_segments(OmegaConf.to_container(cfg.profile, resolve=True)))
    model = load_trained_model(campaign)
    device = resolve_device(campaign.job.device)
    processed = Path(campaign.job.processed)
    snapshot = pd.to_datetime(profiles["snapshot_date"], utc=True).max()
    send_date = send_date_of(profiles, campaign)
    contacts = recent_contacts(campaign.job.contact_log, campaign, send_date)
    buyers = recent_category_buyers(processed, campaign, snapshot)

    out_dir = Path(campaign.job.out_dir)
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(campaign.job.model_dir, tmp / "model")
        result, engine = score_audience(profiles, campaign, model, tmp / "model", contacts, buyers)
        aud = result.audience
        uplift_summary = aud.attrs.pop("uplift", None)
        aud.to_parquet(tmp / "audience.parquet", index=False)
        treat = aud[aud["group"] == "treatment"]
        manifest = {
            "campaign_id": campaign.id, "campaign": to_dict(campaign), "data": campaign.data,
            "steps": result.steps, "warnings": result.warnings,
            "counts": {"audience": int(len(aud)), "treatment": int(len(treat)), "control": int(len(aud) - len(treat))},
            "channels": treat["channel"].astype(str).value_counts().to_dict(),
            "treatment_cost": float(treat["cost"].sum()),
            "send_time": {"local_zones": aud["timezone"].astype(str).value_counts().to_dict(),
                          "zone_source": ("profiles column timezone (default where null: send_time.default_timezone)"
                                          if "timezone" in profiles.columns else
                                          "send_time.default_timezone (the profiles have no timezone column)"),
                          "send_at": "UTC"},
            "snapshot_date": str(snapshot), "send_date": result.send_date,
            "model": {"kind": model.kind, "features": model.features, "metrics": model.meta.get("metrics"),
                      "training": model.meta.get("training"), "dir": str(campaign.job.model_dir)},
            "inputs": {"profiles": {"path": str(campaign.job.profiles), "sha256": file_sha256(campaign.job.profiles)},
                       "processed_manifest": (file_sha256(processed / "manifest.json")
                                              if (processed / "manifest.json").is_file() else None),
                       "contact_log_users_capped": len(contacts)},
            "device": device, "engine": engine, "timings_s": result.timings_s,
            "code_version": code_version(), "seconds": time.perf_counter() - t_start,
        }
        if uplift_summary is not None:
            manifest["uplift"] = uplift_summary
            audience_report(manifest, tmp)
        write_json(tmp / "manifest.json", manifest)
    update_contact_log(campaign.job.contact_log, campaign, aud)
    audit_event("audience.build", cli_actor(), campaign=campaign.id, users=int(len(aud)),
                treatment=int(manifest["counts"]["treatment"]), forgotten_left_out=n_forgotten,
                file="audience.parquet", sha256=file_sha256(out_dir / "audience.parquet"))
    bundle_dir = None
    if campaign.job.write_bundle:
        bundle_dir = publish_to_bundle(campaign, out_dir / "model", profiles, manifest)
        if bundle_dir is None:
            log.info("no bundle under %s: campaign model not published to serving", campaign.job.bundles)
    log.info("audience %s: %s", campaign.id, " -> ".join(f"{s['step']}={s['users']}" for s in result.steps))
    return BuildResult(out_dir, aud, manifest, bundle_dir)


def rewrite_argv(argv: Iterable[str]) -> list[str]:
    """``--ray-address ADDR`` / ``--ray-address=ADDR`` -> the Hydra override ``campaign.job.ray_address=ADDR``."""
    argv, out, i = list(argv), [], 0
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


def report(res: BuildResult) -> None:
    """The command line's summary: one line, plus the loud warnings on stderr."""
    m = res.manifest
    for w in m["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print(f"audience {m['campaign_id']}: {m['counts']['treatment']} treatment + {m['counts']['control']} control "
          f"-> {res.out_dir / 'audience.parquet'}" + (f"; model in bundle {res.bundle_dir}" if res.bundle_dir else ""))


@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("build_audience", run, cfg)
    report(res)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *rewrite_argv(sys.argv[1:])]
    main()
