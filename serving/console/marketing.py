"""The console's marketing views as JSON: segments and profiles, campaigns.

Read from the artifacts the jobs write, never recomputed here:

- ``segments_view``: the latest ``<artifacts>/profiles/<data>/`` (``features.profile``): segment sizes
  (clusters and named segments), lifecycle stages and the flows between the two dates the profile job
  used, the RFM grid (users per recency x frequency score, mean monetary value) and RFM groups, and the
  segment profiles (each feature's mean in standard deviations from the average user).
- ``campaigns_view``: every ``<artifacts>/campaigns/<id>/`` (``build_audience``): spec, audience funnel,
  treatment and control counts, channels, the send schedule by the user's local hour; and each readout
  under ``<artifacts>/reports/campaigns/<id>*/results.json`` (uplift with CI, incremental conversions,
  ROI).

Missing data is not an error: the view says which command fills it (``missing``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROFILE_FILES = ("profiles.parquet", "segments.parquet", "lifecycle_flows.parquet", "manifest.json")
STAGES = ("new", "active", "at_risk", "dormant", "churned")
NOT_SEEN = "not_seen"


def clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, timestamps -> ISO strings."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [clean(v) for v in x.tolist()]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    if x is pd.NA or x is pd.NaT:
        return None
    return x


def missing(message: str, command: str) -> dict[str, Any]:
    return {"available": False, "missing": {"message": message, "command": command}}


def profile_folders(artifacts: Path) -> list[Path]:
    """Complete profile folders, newest first."""
    root = artifacts / "profiles"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and all((p / f).is_file() for f in PROFILE_FILES)]
    return sorted(found, key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)


def segments_view(artifacts: Path, data: str | None = None) -> dict[str, Any]:
    folders = profile_folders(artifacts)
    if not folders:
        return missing(f"no profiles under {artifacts / 'profiles'}",
                       "python -m features.profile data=<name>   # e.g. data=online_retail")
    names = [p.name for p in folders]
    folder = folders[names.index(data)] if data in names else folders[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    seg = pd.read_parquet(folder / "segments.parquet")
    prof = pd.read_parquet(folder / "profiles.parquet",
                           columns=["user_id", "r_score", "f_score", "monetary", "m_score", "rfm_group", "lifecycle"])
    flows = pd.read_parquet(folder / "lifecycle_flows.parquet")
    segments = [{"kind": r.kind, "segment": int(r.segment), "name": r.name, "size": int(r.size),
                 "share": float(r.share), "description": r.description,
                 "rule": None if pd.isna(r.rule) else str(r.rule)} for r in seg.itertuples(index=False)]
    zcols = [c for c in seg.columns if c.startswith("z_") and seg[c].fillna(0).abs().max() > 1e-9]
    shown = seg[seg["size"] > 0]
    out = {
        "available": True, "data": folder.name, "datasets": names, "folder": str(folder),
        "snapshot_date": str(manifest.get("snapshot_date", "")), "flows_from": str(manifest.get("flows_from", "")),
        "users": int(manifest.get("counts", {}).get("users", len(prof))),
        "consent_source": (manifest.get("consent") or {}).get("source"),
        "segments": segments,
        "lifecycle": {s: int((prof["lifecycle"] == s).sum()) for s in STAGES},
        "flows": _flows(flows),
        "rfm": _rfm_grid(prof, "no_purchase"),
        "rfm_groups": [{"group": str(g), "users": int(n)} for g, n in prof["rfm_group"].value_counts().items()],
        "profiles": {"features": [c[2:] for c in zcols],
                     "rows": [{"kind": r["kind"], "name": r["name"], "size": int(r["size"]),
                               "z": [r[c] for c in zcols]} for _, r in shown.iterrows()]},
        "report": _maybe(artifacts / "reports" / "profiles" / folder.name / "report.html"),
        "flows_command": f"python -m features.profile data={folder.name} profile.flows_from=YYYY-MM-DD "
                         f"profile.snapshot_date=YYYY-MM-DD",
    }
    return clean(out)


def _maybe(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _flows(flows: pd.DataFrame) -> dict[str, Any]:
    if flows.empty:
        return {"from_date": None, "to_date": None, "from": [], "to": list(STAGES), "matrix": []}
    rows = [s for s in (NOT_SEEN, *STAGES) if s in set(flows["from_stage"])]
    m = flows.pivot_table(index="from_stage", columns="to_stage", values="n_users", aggfunc="sum").reindex(
        index=rows, columns=list(STAGES)).fillna(0).astype(int)
    return {"from_date": pd.Timestamp(flows["from_date"].iloc[0]).date().isoformat(),
            "to_date": pd.Timestamp(flows["to_date"].iloc[0]).date().isoformat(),
            "from": rows, "to": list(STAGES), "matrix": m.to_numpy().tolist()}


def _rfm_grid(prof: pd.DataFrame, no_purchase_group: str) -> dict[str, Any]:
    buyers = prof[prof["rfm_group"] != no_purchase_group]
    r_idx, f_idx = list(range(5, 0, -1)), list(range(1, 6))
    counts = buyers.pivot_table(index="r_score", columns="f_score", values="user_id", aggfunc="count").reindex(
        index=r_idx, columns=f_idx).fillna(0).astype(int)
    value_col = "monetary" if buyers["monetary"].notna().any() else "m_score"
    value = buyers.pivot_table(index="r_score", columns="f_score", values=value_col, aggfunc="mean").reindex(
        index=r_idx, columns=f_idx)
    return {"r": r_idx, "f": f_idx, "counts": counts.to_numpy().tolist(), "value": value.to_numpy().tolist(),
            "value_name": f"mean {value_col}"}


# ------------------------------------------------------------------------------------------------ campaigns
def campaigns_view(artifacts: Path) -> dict[str, Any]:
    root = artifacts / "campaigns"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file()
                     and (p / "audience.parquet").is_file()) if root.is_dir() else []
    if not folders:
        return missing(f"no campaign audience under {root}",
                       "python scripts/build_audience.py campaign=winback   # trains its model, builds the audience")
    return clean({"available": True, "campaigns": [_campaign(p, artifacts) for p in folders]})


SPEC_PARTS = ("objective", "eligibility", "exclusions", "budget", "control", "channels", "offer", "send_time")


def _campaign(folder: Path, artifacts: Path) -> dict[str, Any]:
    m = json.loads((folder / "manifest.json").read_text())
    spec = m.get("campaign") or {}
    cid = str(m.get("campaign_id") or folder.name)
    aud = pd.read_parquet(folder / "audience.parquet", columns=["group", "send_at", "timezone", "channel"])
    readouts = [_readout(p) for p in _readout_folders(artifacts, cid)]
    return {
        "id": cid, "name": spec.get("name", cid), "description": spec.get("description", ""),
        "data": m.get("data"), "snapshot_date": m.get("snapshot_date"), "send_date": m.get("send_date"),
        "spec": {k: spec.get(k) for k in SPEC_PARTS if k in spec},
        "counts": m.get("counts", {}), "steps": m.get("steps", []), "channels": m.get("channels", {}),
        "treatment_cost": m.get("treatment_cost"), "warnings": m.get("warnings", []),
        "model": {"kind": (m.get("model") or {}).get("kind"), "metrics": (m.get("model") or {}).get("metrics")},
        "audience_rows": {"treatment": int((aud["group"] == "treatment").sum()),
                          "control": int((aud["group"] == "control").sum())},
        "schedule": send_schedule(aud),
        "readouts": readouts,
        "readout_command": None if readouts else (
            f"python scripts/evaluate_campaign.py campaign={cid}   # outcomes from the events after send_at; "
            f"or a backtest: python -m training.campaigns.backtest campaign={cid} "
            f"campaign.job.backtest_cutoff=YYYY-MM-DD"),
    }


def send_schedule(aud: pd.DataFrame) -> dict[str, Any]:
    """Users per local hour of their send time (treatment and control), from ``send_at`` in their zone."""
    hours = pd.Series(-1, index=aud.index, dtype="int64")
    send = pd.to_datetime(aud["send_at"], utc=True)
    zones = aud["timezone"].astype("string").fillna("UTC")
    for zone, idx in zones.groupby(zones, observed=True).groups.items():
        try:
            hours.loc[idx] = send.loc[idx].dt.tz_convert(str(zone)).dt.hour.to_numpy()
        except Exception:  # noqa: BLE001 - an unknown zone name: count it in UTC
            hours.loc[idx] = send.loc[idx].dt.hour.to_numpy()
    group = aud["group"].astype(str)
    return {"hours": list(range(24)),
            **{g: [int(((group == g) & (hours == h)).sum()) for h in range(24)] for g in ("treatment", "control")}}


def _readout_folders(artifacts: Path, cid: str) -> list[Path]:
    root = artifacts / "reports" / "campaigns"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p.name == cid or p.name.startswith(cid + "-"))
                  and (p / "results.json").is_file())


def _readout(folder: Path) -> dict[str, Any]:
    r = json.loads((folder / "results.json").read_text())
    return {
        "name": folder.name, "backtest": bool(r.get("backtest")), "simulated": bool(r.get("simulated_outcomes")),
        "outcomes_source": r.get("outcomes_source"), "backtest_cutoff": r.get("backtest_cutoff"),
        "n_treatment": r.get("n_treatment"), "n_control": r.get("n_control"),
        "effects": r.get("effects", []), "by_segment": r.get("by_segment", []),
        "incremental_conversions": r.get("incremental_conversions"),
        "incremental_revenue": r.get("incremental_revenue"), "incremental_margin": r.get("incremental_margin"),
        "incremental_margin_ci": r.get("incremental_margin_ci"),
        "net_incremental_profit": r.get("net_incremental_profit"),
        "costs": r.get("costs"), "roi": r.get("roi"), "roi_ci": r.get("roi_ci"),
        "aa_check": r.get("aa_check"), "warnings": r.get("warnings", []),
    }
