"""User profiles and segments: ``python -m features.profile data=<name>``.

Reads the processed dataset (``features.prepare``), builds one profile row per user (RFM, lifecycle,
price sensitivity, affinities, activity, CLV / churn, clusters, named segments, consent flags; see
``features.profiles``) and writes, atomically:

- ``${profile.out_dir}`` (default ``${paths.artifacts}/profiles/<data>/``): ``profiles.parquet``,
  ``segments.parquet``, ``lifecycle_flows.parquet``, ``affinity.parquet``, ``consent.parquet``,
  ``manifest.json``;
- ``${profile.report_dir}`` (default ``${paths.reports}/profiles/<data>/``): ``report.html`` and PNGs.

Settings live in ``conf/profile/`` (e.g. ``profile.snapshot_date=2011-09-01``,
``profile.consent.path=/path/consent.csv``, ``profile=short_horizon`` for a few days of clickstream).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from features.processed import ProcessedDataError, load_events, load_items, load_manifest, load_users, processed_dir
from features.profiles.build import ProfileTables, build_profiles

log = logging.getLogger(__name__)
LIST_COLUMNS = ("top_categories", "top_attributes")


@dataclass
class ProfileResult:
    out_dir: Path
    report_dir: Path
    n_users: int
    manifest: dict[str, Any]
    skipped: bool = False      # true when inputs, config and code were unchanged (``force=true`` re-runs)


def _write_parquet(df, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    for col in LIST_COLUMNS:
        if col in table.column_names:
            i = table.column_names.index(col)
            table = table.set_column(i, col, table.column(col).cast(pa.list_(pa.string())))
    pq.write_table(table, path)


def _counts(t: ProfileTables, n_events: int) -> dict[str, Any]:
    p = t.profiles
    return {
        "users": len(p),
        "events": n_events,
        "lifecycle": p["lifecycle"].value_counts().to_dict(),
        "rfm_group": p["rfm_group"].value_counts().to_dict(),
        "named_segment": p["named_segment"].value_counts().to_dict(),
        "segment": {str(k): int(v) for k, v in p["segment"].value_counts().sort_index().items()},
        "opted_out": {c.removeprefix("opted_out_"): int(p[c].sum()) for c in p.columns if c.startswith("opted_out_")},
        "with_clv": int(p["clv"].notna().sum()),
        "with_price_sensitivity": int(p["price_sensitivity"].notna().sum()),
        "flows_rows": len(t.flows),
    }


def _unchanged(out_dir: Path, report_dir: Path, inputs: dict[str, str], config: dict[str, Any]) -> dict[str, Any] | None:
    """The previous manifest when the last run had the same inputs, config and code; else None."""
    try:
        old = read_json(out_dir / "manifest.json")
    except (OSError, ValueError):
        return None
    same = old.get("inputs") == inputs and old.get("config") == config and old.get("code_version") == code_version()
    return old if same and (report_dir / "report.html").exists() else None


def run(cfg: DictConfig) -> ProfileResult:
    """Build and write the profiles of ``cfg.data``; returns where they went and the manifest."""
    started = time.perf_counter()
    src = processed_dir(cfg)
    data_manifest = load_manifest(src)
    pcfg = OmegaConf.to_container(cfg.profile, resolve=True)
    out_dir, report_dir = Path(pcfg["out_dir"]), Path(pcfg["report_dir"])
    inputs = {name: file_sha256(src / name) for name in ("events.parquet", "items.parquet", "users.parquet")}
    if pcfg["consent"]["path"]:
        consent_path = Path(pcfg["consent"]["path"])
        if not consent_path.exists():
            raise FileNotFoundError(f"profile.consent.path: file not found: {consent_path}")
        inputs[str(consent_path)] = file_sha256(consent_path)
    config = json.loads(json.dumps({"profile": pcfg, "seed": int(cfg.seed)}, default=str))
    previous = _unchanged(out_dir, report_dir, inputs, config)
    if previous is not None and not cfg.force:
        log.info("profiles of %s unchanged (inputs, config, code): kept %s; force=true re-runs", cfg.data.name, out_dir)
        return ProfileResult(out_dir, report_dir, int(previous["counts"]["users"]), previous, skipped=True)

    events, items, users = load_events(src), load_items(src), load_users(src)
    tables = build_profiles(events, items, users, pcfg, int(cfg.seed), time_kind=data_manifest.get("time_kind", "timestamp"))
    manifest = {
        "kind": "profiles",
        "data": str(cfg.data.name),
        "pseudo_key_fingerprint": data_manifest.get("pseudo_key_fingerprint"),  # checked by every reader
        "processed_dir": str(src),
        "snapshot_date": tables.snapshot.isoformat(),
        "flows_from": tables.flows_from.isoformat(),
        "counts": _counts(tables, len(events)),
        "consent": {"source": tables.consent.source, "synthetic": tables.consent.source == "synthetic",
                    "input_path": tables.consent.input_path, "channels": pcfg["consent"]["channels"]},
        "notes": tables.info,
        "config": config,
        "inputs": inputs,
        "code_version": code_version(),
        "device": "cpu",   # pandas / scikit-learn / lifetimes only: no accelerator path
        "files": ["profiles.parquet", "segments.parquet", "lifecycle_flows.parquet", "affinity.parquet", "consent.parquet"],
    }
    with atomic_dir(out_dir) as tmp:
        _write_parquet(tables.profiles, tmp / "profiles.parquet")
        _write_parquet(tables.segments, tmp / "segments.parquet")
        _write_parquet(tables.flows, tmp / "lifecycle_flows.parquet")
        _write_parquet(tables.affinity, tmp / "affinity.parquet")
        _write_parquet(tables.consent.table, tmp / "consent.parquet")
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "manifest.json", manifest)
    from features.profiles.report import write_report   # matplotlib: only once there is something to plot

    with atomic_dir(report_dir) as tmp:
        written = write_report(tmp, tables.profiles, tables.segments, tables.flows, manifest, pcfg)
        write_json(tmp / "manifest.json", {"kind": "profile_report", "data": manifest["data"], "files": written,
                                           "profiles": str(out_dir), "code_version": manifest["code_version"]})
    log.info("profiled %d users of %s in %.1fs -> %s (report %s)", len(tables.profiles), cfg.data.name,
             manifest["seconds"], out_dir, report_dir)
    return ProfileResult(out_dir, report_dir, len(tables.profiles), manifest)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError, ProcessedDataError, KeyError) as exc:
        print(f"features.profile: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"profiles: {result.n_users} users -> {result.out_dir}; report -> {result.report_dir / 'report.html'}")


if __name__ == "__main__":
    main()
