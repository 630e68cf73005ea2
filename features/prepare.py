"""``python -m features.prepare data=<name>``: raw files → ``${paths.processed}/<name>/``.

Reads the dataset through its adapter, cleans it (``features.cleaning``), pseudonymises user keys and
assigns dense ids (``features.entities``), builds the item and user tables and the splits, and writes
everything atomically with a manifest (see ``features.schema`` for the layout). The manifest records
the pseudonymisation key's fingerprint (``pseudo_key_fingerprint``, see ``features.privacy``). A re-run whose
inputs (content hashes), config and key are unchanged is skipped unless ``force=true``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from features.adapters import DataConfigError, RawData, load_raw
from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json, write_parquets
from features.cleaning import clean
from features.entities import build_events, build_items, build_users, input_stats, sorted_attributes, user_ids
from features.privacy import key_fingerprint, pseudo_key
from features.processed import processed_dir
from features.quarantine import Ledger
from features.schema import QUARANTINE_SCHEMA
from features.splits import make_splits
from features.tombstones import drop_tombstoned_raw, load_tombstones, tombstone_dir

log = logging.getLogger("features.prepare")
PIPELINE_VERSION = 1  # bump when a change of code changes the outputs for the same inputs


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict
    skipped: bool


def input_files(data_cfg: Any) -> list[Path]:
    """Every input file named in the data config (keys ``path`` and ``attributes`` at any depth)."""
    from omegaconf import DictConfig, ListConfig

    found: list[Path] = []

    def walk(node: Any) -> None:
        if isinstance(node, DictConfig):
            for k in node:
                v = node.get(k)
                if k in ("path", "attributes") and isinstance(v, str) and v:
                    found.append(Path(v))
                else:
                    walk(v)
        elif isinstance(node, ListConfig):
            for v in node:
                walk(v)

    walk(data_cfg)
    return list(dict.fromkeys(found))


def pipeline_code_hash() -> str:
    """Hash of the data layer's source files: a code change re-runs preparation."""
    root = Path(__file__).resolve().parent
    files = sorted([*root.glob("adapters/*.py"), *(root / n for n in (
        "prepare.py", "entities.py", "cleaning.py", "timestamps.py", "splits.py", "quarantine.py", "synthetic.py",
        "schema.py", "privacy.py", "tables.py", "artifacts.py"))])
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def check_input_file(path: Path) -> None:
    """An input must be an existing, readable file (a folder or a missing path is a config error)."""
    if not path.exists():
        raise DataConfigError(f"input file not found: {path}")
    if path.is_dir():
        raise DataConfigError(f"input path {path} is a directory, not a file: give the file itself "
                              f"(data.path or data.files[].path)")


def fingerprint(data_cfg: Any, tombstones: Path | None = None) -> tuple[str, dict[str, str], dict]:
    """(fingerprint, input hashes, resolved data config): what decides whether a re-run is needed."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(data_cfg, resolve=True)
    hashes = {}
    for p in input_files(data_cfg):
        check_input_file(p)
        hashes[str(p)] = file_sha256(p)
    # A different pseudonymisation key changes user_key: it must re-run too (only its fingerprint enters).
    blob = json.dumps({"config": resolved, "inputs": hashes, "pipeline": PIPELINE_VERSION, "code": pipeline_code_hash(),
                       "key": key_fingerprint(),
                       # a new tombstone re-runs it too (features.tombstones: forgotten users stay out)
                       **({"tombstones": sorted(stones)} if (stones := load_tombstones(tombstones)) else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), hashes, resolved


def run(cfg: Any) -> PrepareResult:
    """Prepare ``cfg.data`` into ``processed_dir(cfg)``; returns where and the manifest."""
    t0 = time.perf_counter()
    data_cfg = cfg.data
    out_dir = processed_dir(cfg)
    stones_dir = tombstone_dir(cfg.paths.artifacts)
    fp, hashes, resolved = fingerprint(data_cfg, stones_dir)
    manifest_path = out_dir / "manifest.json"
    if not cfg.get("force", False) and manifest_path.exists():
        old = read_json(manifest_path)
        if old.get("fingerprint") == fp:
            log.info("%s is up to date (same inputs and config): skipped; force=true to redo", out_dir)
            return PrepareResult(out_dir, old, True)

    raw = load_raw(data_cfg)
    if data_cfg.get("kind", "events") == "tables":
        return write_tables_only(raw, cfg, out_dir, fp, hashes, resolved)  # validated tables only (hillstrom)
    ledger = Ledger(raw.files, columns=raw.columns)
    stats = input_stats(raw)
    df = clean(raw, data_cfg, ledger)
    df, n_forgotten = drop_tombstoned_raw(df, "user", pseudonymised=bool(data_cfg.user_key_pseudonymised),
                                          folder=stones_dir)
    if n_forgotten:  # users who asked to be forgotten (features.forget) never come back
        ledger.dropped["forgotten"] = ledger.dropped.get("forgotten", 0) + n_forgotten
    raw.frame = pd.DataFrame()  # the uncleaned rows are no longer needed (peak memory)
    key, key_source = pseudo_key()
    user_id, user_keys, user_raw = user_ids(df["user"], key, bool(data_cfg.user_key_pseudonymised))
    ev_table, events, order, items_idx = build_events(df, user_id)
    order_attrs = sorted_attributes(df, order)
    item_attrs = {c: order_attrs[c] for c in raw.item_attributes if c in order_attrs}
    user_attrs = {c: order_attrs[c] for c in raw.user_attributes if c in order_attrs}
    items = build_items(events, item_attrs, items_idx, raw.items)
    users = build_users(events, user_attrs, user_keys, user_raw, raw.users)
    del user_id, user_raw
    n_orders = int(df["order_id"].nunique()) if "order_id" in df.columns and df["order_id"].notna().any() else None
    del df, order_attrs, item_attrs, user_attrs  # free the cleaned rows before writing (peak memory)
    quarantine = ledger.table()
    splits = make_splits(events, data_cfg.get("splits"), raw.time_kind)

    n_dropped = dict(sorted(ledger.dropped.items()))
    n_accounted = len(events) + len(quarantine) + sum(n_dropped.values())
    if n_accounted != raw.n_input_rows:
        raise RuntimeError(f"reconciliation failed for {data_cfg.name}: {raw.n_input_rows} input rows but "
                           f"{len(events)} events + {len(quarantine)} quarantined + {sum(n_dropped.values())} dropped")

    with atomic_dir(out_dir) as tmp:
        jobs: list = [(ev_table, tmp / "events.parquet", None), (items, tmp / "items.parquet", None),
                      (users, tmp / "users.parquet", None), (quarantine, tmp / "quarantine.parquet", QUARANTINE_SCHEMA)]
        for sp in splits:
            (tmp / "splits" / sp.kind).mkdir(parents=True)
            for part, rows in sp.rows.items():
                jobs.append((lambda r=rows: ev_table.take(pa.array(r)), tmp / "splits" / sp.kind / f"{part}.parquet", None))
        if raw.tables:
            (tmp / "tables").mkdir()
        for name, table in raw.tables.items():
            jobs.append((table, tmp / "tables" / f"{name}.parquet", None))
        if raw.tables_rejected is not None:
            jobs.append((raw.tables_rejected, tmp / "tables" / "quarantine.parquet", QUARANTINE_SCHEMA))
        write_parquets(jobs, int(cfg.data.get("write_threads", 2)))
        outputs = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*.parquet"))}
        ts = events["ts"]
        manifest = {
            "schema_version": 1,
            "name": str(data_cfg.name),
            "adapter": str(data_cfg.adapter),
            "time_kind": raw.time_kind,
            "files": raw.files,
            "input_stats": stats,
            "n_input_rows": int(raw.n_input_rows),
            "n_events": int(len(events)),
            "n_quarantined": int(len(quarantine)),
            "n_dropped": n_dropped,
            "n_users": int(len(users)),
            "n_items": int(len(items)),
            "n_orders": n_orders,
            "event_counts": {k: int(v) for k, v in events["event"].value_counts().sort_index().items()},
            "time_range": [ts.min().isoformat(), ts.max().isoformat()] if len(ts) else None,
            "quarantine_by_reason": {k: int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
            "splits": {sp.kind: sp.counts() for sp in splits},
            "tables": {name: int(len(t)) for name, t in sorted(raw.tables.items())},
            "tables_quarantined": (int(len(raw.tables_rejected)) if raw.tables_rejected is not None else 0),
            "config": resolved,
            "inputs": hashes,
            "outputs": outputs,
            "fingerprint": fp,
            "pseudonymisation_key": key_source.split(":", 1)[0],
            "pseudo_key_fingerprint": key_fingerprint(key),
            "code_version": code_version(),
            "device": "cpu",
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %s: %d input rows -> %d events, %d quarantined, %s dropped; %d users, %d items (%.1fs)",
             data_cfg.name, raw.n_input_rows, len(events), len(quarantine), n_dropped, len(users), len(items),
             time.perf_counter() - t0)
    return PrepareResult(out_dir, manifest, False)


def write_tables_only(raw: RawData, cfg: Any, out_dir: Path, fp: str, hashes: dict, resolved: dict) -> PrepareResult:
    """Write a ``kind: tables`` dataset: ``tables/*.parquet``, ``quarantine.parquet``, manifest."""
    q = raw.rejected
    n_rows = sum(len(t) for t in raw.tables.values())
    if raw.n_input_rows != n_rows + len(q):
        raise RuntimeError(f"reconciliation failed for {cfg.data.name}: {raw.n_input_rows} input rows but "
                           f"{n_rows} valid + {len(q)} quarantined")
    key, key_source = pseudo_key()
    with atomic_dir(out_dir) as tmp:
        (tmp / "tables").mkdir()
        jobs: list = [(t, tmp / "tables" / f"{name}.parquet", None) for name, t in raw.tables.items()]
        write_parquets([*jobs, (q, tmp / "quarantine.parquet", QUARANTINE_SCHEMA)], int(cfg.data.get("write_threads", 2)))
        manifest = {
            "schema_version": 1, "name": str(cfg.data.name), "kind": "tables", "adapter": str(cfg.data.adapter),
            "files": raw.files, "n_input_rows": int(raw.n_input_rows), "n_rows": int(n_rows),
            "n_events": 0, "n_quarantined": int(len(q)), "n_dropped": {},
            "quarantine_by_reason": {k: int(v) for k, v in q["reason"].value_counts().sort_index().items()},
            "tables": {name: int(len(t)) for name, t in sorted(raw.tables.items())},
            "config": resolved, "inputs": hashes, "fingerprint": fp,
            "pseudonymisation_key": key_source.split(":", 1)[0], "pseudo_key_fingerprint": key_fingerprint(key),
            "outputs": {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*.parquet"))},
            "code_version": code_version(), "device": "cpu",
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("prepared %s: %d input rows -> %d valid, %d quarantined", cfg.data.name, raw.n_input_rows, n_rows, len(q))
    return PrepareResult(out_dir, manifest, False)


def check_data_name(argv: list[str], conf_dir: Path) -> None:
    """Fail with one line when ``data=<name>`` names no config (before Hydra prints a long error)."""
    for a in argv:
        if a.startswith("data=") or a.startswith("+data="):
            name = a.split("=", 1)[1]
            if not (conf_dir / "data" / f"{name}.yaml").exists() or name.startswith("_"):
                known = sorted(p.stem for p in (conf_dir / "data").glob("*.yaml") if not p.stem.startswith("_"))
                print(f"error: unknown dataset data={name!r}; known: {', '.join(known)}", file=sys.stderr)
                sys.exit(2)


def main() -> None:
    import hydra

    conf_dir = Path(__file__).resolve().parent.parent / "conf"
    check_data_name(sys.argv[1:], conf_dir)

    @hydra.main(config_path="../conf", config_name="prepare", version_base=None)
    def _main(cfg: Any) -> None:
        try:
            res = run(cfg)
        except (DataConfigError, ValueError) as e:
            print(f"error: {e}".splitlines()[0], file=sys.stderr)
            sys.exit(2)
        m = res.manifest
        print(json.dumps({"out_dir": str(res.out_dir), "skipped": res.skipped, "n_events": m.get("n_events"),
                          "n_users": m.get("n_users"), "n_items": m.get("n_items"),
                          "n_quarantined": m.get("n_quarantined"), "n_dropped": m.get("n_dropped")}))

    _main()


if __name__ == "__main__":
    main()
