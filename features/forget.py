"""The right to be forgotten: ``python -m features.forget user=<raw id>`` removes a user from every artifact.

The raw id is pseudonymised with this process's key (``features.privacy``); the raw id is never written.
Then, in order:

1. the tombstone (``features.tombstones``) is written first, so an ingestion or audience build running
   meanwhile already leaves the user out, and it is written even for an unknown user (who may arrive later);
2. the data layer's artifacts (``forget_data``): every prepared dataset under ``paths.processed`` (events,
   splits, users, quarantine rows naming the key, side tables) and every profile folder under
   ``paths.artifacts/profiles`` (profiles, consent, affinity; segment sizes are aggregates and stay);
   each manifest gets its counts and file hashes updated and a ``forgotten`` tally (never a key);
3. the service's artifacts, by the steps listed in ``conf/forget.yaml`` ``steps`` (Hydra ``_target_``
   callables; ``serving.forget.forget_service`` by default: the event log, exposure and attribution logs,
   audiences and the contact log, per-user tables of every bundle version, the Redis store when configured).
   The data layer imports no serving code: the list lives in the config.

The models trained on data that held the user (run folders, campaign models, bundles) are listed for
retraining, not silently kept as clean: their weights were fitted on the user's events.

It prints a table and, as the last line, one JSON object (``ForgetReport``): the pseudonymised key, whether
the user was found, rows removed per artifact, what to retrain. Unknown user: ``"status": "not found"``, exit 0.
Each run is recorded in the audit log (``conf/forget.yaml`` ``audit``: ``serving.audit.audit_event``) with a
hash of the key (``subject_hash``), not the key itself; the report file goes next to the tombstones. Writes are atomic per file (temporary file + rename).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.artifacts import file_sha256, read_json, write_json
from features.privacy import KeyMismatchError, check_key_fingerprint, key_fingerprint, pseudonymise_one
from features.tombstones import add_tombstone, folder_lock, tombstone_dir

log = logging.getLogger("features.forget")

RETRAIN_ROOTS = ("runs", "campaign_models", "campaigns")


@dataclass
class ForgetReport:
    """What one forget did. ``removed``: artifact path (relative to the artifacts folder) -> rows removed."""

    user_key: str
    status: str = "not found"            # "forgotten" when any row was removed, else "not found"
    tombstone: str = "written"           # "written", or "already there"
    removed: dict[str, int] = field(default_factory=dict)
    bundles: dict[str, str] = field(default_factory=dict)   # version that held the user -> what was done
    retrain: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)       # datasets (processed / profiles) that held the user
    errors: list[str] = field(default_factory=list)         # artifacts that could not be checked (e.g. another key)
    seconds: float = 0.0

    def add(self, removed: dict[str, int]) -> None:
        for k, v in removed.items():
            if v:
                self.removed[k] = self.removed.get(k, 0) + int(v)

    @property
    def rows_removed(self) -> int:
        return sum(self.removed.values())


def subject_hash(user_key: str) -> str:
    """What the audit log records of a forgotten user: a hash of the key (lets an auditor check that a given
    key was forgotten without the log itself holding the key)."""
    return hashlib.sha256(f"shoprec-forgotten:{user_key}".encode()).hexdigest()[:16]


# --- table rewriting -------------------------------------------------------------------------------------------
def _replace_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a new inode: hard links elsewhere (bundle versions) keep their bytes


def parquet_drop(path: Path, user_key: str, user_ids: Iterable[int] = (), *, text_columns: Iterable[str] = ()) -> int:
    """Remove the rows of ``path`` that belong to the user: ``user_key`` equal to the key, ``user_id`` in
    ``user_ids``, or one of ``text_columns`` containing the key (quarantined raw rows). Returns rows removed."""
    schema = pq.read_schema(path)
    names = set(schema.names)
    ids = sorted({int(i) for i in user_ids})
    text_columns = [c for c in text_columns if c in names]
    if "user_key" not in names and not ("user_id" in names and ids) and not text_columns:
        return 0
    table = pq.read_table(path)
    mask = pa.array([False] * table.num_rows, pa.bool_())
    if "user_key" in names:
        mask = pc.or_(mask, pc.fill_null(pc.equal(pc.cast(table["user_key"], pa.string()), user_key), False))
    if "user_id" in names and ids:
        mask = pc.or_(mask, pc.fill_null(pc.is_in(pc.cast(table["user_id"], pa.int64()),
                                                  value_set=pa.array(ids, pa.int64())), False))
    for c in text_columns:
        mask = pc.or_(mask, pc.fill_null(pc.match_substring(pc.cast(table[c], pa.string()), user_key), False))
    n = int(pc.sum(mask).as_py() or 0)
    if n:
        _replace_parquet(path, table.filter(pc.invert(mask)))
    return n


def text_drop(path: Path, user_key: str) -> int:
    """Remove every line of a text file (CSV, JSON lines) that contains the key; atomic. Returns lines removed."""
    data = path.read_bytes()
    needle = user_key.encode()
    if needle not in data:
        return 0
    lines = data.splitlines(keepends=True)
    keep = [ln for ln in lines if needle not in ln]
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(b"".join(keep))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(lines) - len(keep)


def forget_in_files(folder: Path, user_key: str, rel_to: Path, user_ids: Iterable[int] = (), *,
                    text_columns: Iterable[str] = (), skip: Callable[[Path], bool] | None = None) -> dict[str, int]:
    """``parquet_drop`` every Parquet file and ``text_drop`` every ``.csv``/``.jsonl`` file under ``folder``
    (hidden files and ``skip``-ped ones aside). Keys of the result are paths relative to ``rel_to``."""
    out: dict[str, int] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if skip is not None and skip(p):
            continue
        if p.suffix == ".parquet":
            n = parquet_drop(p, user_key, user_ids, text_columns=text_columns)
        elif p.suffix in (".csv", ".jsonl"):
            n = text_drop(p, user_key)
        else:
            continue
        if n:
            out[str(p.relative_to(rel_to))] = n
    return out


def _user_ids(path: Path, user_key: str) -> list[int]:
    """The dense ``user_id``(s) the key has in a ``users``/``profiles`` table (empty when absent)."""
    if not path.exists() or not {"user_id", "user_key"} <= set(pq.read_schema(path).names):
        return []
    t = pq.read_table(path, columns=["user_id", "user_key"])
    hit = t.filter(pc.fill_null(pc.equal(pc.cast(t["user_key"], pa.string()), user_key), False))
    return [int(i) for i in hit["user_id"].to_pylist()]


def _tally(manifest: dict[str, Any], folder: Path, removed: dict[str, int], extra: dict[str, int]) -> dict[str, Any]:
    """The manifest after a forget: a ``forgotten`` tally, updated counts and output hashes."""
    t = dict(manifest.get("forgotten") or {})
    t["n_users"] = int(t.get("n_users", 0)) + 1
    t["n_rows"] = int(t.get("n_rows", 0)) + sum(removed.values())
    t["updated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest["forgotten"] = t
    for k, v in extra.items():
        if isinstance(manifest.get(k), int):
            manifest[k] = int(manifest[k]) - int(v)
    if isinstance(manifest.get("outputs"), dict):
        manifest["outputs"] = {rel: file_sha256(folder / rel) if (folder / rel).exists() else h
                               for rel, h in manifest["outputs"].items()}
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / f".manifest.{uuid.uuid4().hex[:8]}.json"
    write_json(tmp, manifest)
    os.replace(tmp, folder / "manifest.json")


# --- the data layer's artifacts --------------------------------------------------------------------------------
def _checked_manifest(folder: Path, what: str) -> dict[str, Any]:
    """``folder``'s manifest ({} when absent), after checking it was made with this pseudonymisation key."""
    mpath = folder / "manifest.json"
    if not mpath.exists():
        return {}
    manifest = read_json(mpath)
    check_key_fingerprint(manifest.get("pseudo_key_fingerprint"), what)
    return manifest


def forget_processed(pdir: Path, user_key: str, artifacts: Path) -> dict[str, int]:
    """Remove the user from one prepared dataset (``features.prepare`` output). Key fingerprint checked."""
    manifest = _checked_manifest(pdir, f"prepared dataset {pdir}")
    ids = _user_ids(pdir / "users.parquet", user_key)
    removed = forget_in_files(pdir, user_key, artifacts, ids, text_columns=("raw", "message"))
    if removed and manifest:
        rel = lambda name: str((pdir / name).relative_to(artifacts))  # noqa: E731
        n_events, n_q = removed.get(rel("events.parquet"), 0), removed.get(rel("quarantine.parquet"), 0)
        dropped = dict(manifest.get("n_dropped") or {})
        if n_events or n_q:  # the reconciliation n_input_rows = events + quarantined + dropped still holds
            dropped["forgotten"] = int(dropped.get("forgotten", 0)) + n_events + n_q
            manifest["n_dropped"] = dropped
        _write_manifest(pdir, _tally(manifest, pdir, removed, {"n_events": n_events, "n_quarantined": n_q,
                                                               "n_users": len(ids)}))
    return removed


def forget_profiles(folder: Path, user_key: str, artifacts: Path) -> dict[str, int]:
    """Remove the user from one profile folder (``features.profile`` output). Key fingerprint checked."""
    manifest = _checked_manifest(folder, f"profiles {folder}")
    ids = _user_ids(folder / "profiles.parquet", user_key)
    removed = forget_in_files(folder, user_key, artifacts, ids)
    if removed and manifest:
        _write_manifest(folder, _tally(manifest, folder, removed, {"n_users": len(ids)}))
    return removed


def _datasets(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def forget_data(user_key: str, cfg: Any, report: ForgetReport) -> None:
    """The data layer's step: prepared datasets and profiles (``paths.processed``, ``<artifacts>/profiles``)."""
    artifacts = Path(str(cfg.paths.artifacts))
    for pdir in _datasets(Path(str(cfg.paths.processed))):
        try:
            removed = forget_processed(pdir, user_key, artifacts)
        except KeyMismatchError as e:  # the others are still forgotten; the command fails at the end
            report.errors.append(str(e))
            continue
        if removed:
            report.datasets.append(pdir.name)
        report.add(removed)
    for folder in _datasets(artifacts / "profiles"):
        try:
            removed = forget_profiles(folder, user_key, artifacts)
        except KeyMismatchError as e:
            report.errors.append(str(e))
            continue
        if removed and folder.name not in report.datasets:
            report.datasets.append(folder.name)
        report.add(removed)


def trained_on(manifest: dict[str, Any]) -> set[str]:
    """The dataset names a run, model or bundle manifest says it was trained on."""
    names = set()
    for v in (manifest.get("data"), (manifest.get("trained_on") or {}).get("data") if isinstance(
            manifest.get("trained_on"), dict) else None, (manifest.get("campaign") or {}).get("data")
              if isinstance(manifest.get("campaign"), dict) else None):
        if isinstance(v, str):
            names.add(v)
        elif isinstance(v, dict) and isinstance(v.get("name"), str):
            names.add(v["name"])
    return names


def models_to_retrain(artifacts: Path, datasets: Iterable[str]) -> list[str]:
    """Run folders and campaign models whose manifest names a dataset that held the user."""
    wanted = set(datasets)
    out = []
    if not wanted:
        return out
    for root in RETRAIN_ROOTS:
        base = artifacts / root
        if not base.is_dir():
            continue
        for m in sorted(base.rglob("manifest.json")):
            if any(part.startswith(".") for part in m.relative_to(base).parts):
                continue
            try:
                names = trained_on(read_json(m))
            except (OSError, ValueError):
                continue
            if root == "campaigns" and m.parent.parent == base:  # an audience, not a model
                continue
            if names & wanted:
                out.append(str(m.parent.relative_to(artifacts)))
    return out


# --- the command ------------------------------------------------------------------------------------------------
def run(cfg: Any, *, steps: list[Callable[..., None]] | None = None) -> ForgetReport:
    """Forget ``cfg.user`` (a raw id) or ``cfg.user_key`` (already pseudonymised) everywhere."""
    t0 = time.perf_counter()
    if cfg.get("user_key"):
        user_key = str(cfg.user_key).strip().lower()
    elif cfg.get("user") is not None and str(cfg.user).strip():
        user_key = pseudonymise_one(cfg.user)
    else:
        raise ValueError("user: required (python -m features.forget user=<raw id>), or user_key=<pseudonymised key>")
    artifacts = Path(str(cfg.paths.artifacts))
    report = ForgetReport(user_key=user_key)
    report.tombstone = "written" if add_tombstone(user_key, tombstone_dir(artifacts)) else "already there"
    steps = steps if steps is not None else _configured_steps(cfg)
    with folder_lock(tombstone_dir(artifacts), ".forget.lock"):  # two forgets never rewrite one file at once
        forget_data(user_key, cfg, report)
        for step in steps:
            step(user_key, cfg, report)
    report.retrain = sorted(set(report.retrain) | set(models_to_retrain(artifacts, report.datasets)))
    report.status = "forgotten" if report.rows_removed else "not found"
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _configured_steps(cfg: Any) -> list[Callable[..., None]]:
    from hydra.utils import get_method

    return [get_method(str(s)) for s in (cfg.get("steps") or [])]


def format_report(report: ForgetReport) -> str:
    lines = [f"user_key {report.user_key}: {report.status} (tombstone {report.tombstone}), "
             f"{report.rows_removed} rows removed in {report.seconds:.2f} s", f"{'artifact':<72} {'rows removed':>12}"]
    lines += [f"{k:<72} {v:>12}" for k, v in sorted(report.removed.items())]
    lines += [f"bundle {k}: {v}" for k, v in sorted(report.bundles.items())]
    lines += [f"retrain (fitted on the user's data): {r}" for r in report.retrain]
    lines += [f"NOT CHECKED: {e}" for e in report.errors]
    return "\n".join(lines)


def main() -> None:
    import hydra

    from features.cli import run_or_exit

    @hydra.main(config_path="../conf", config_name="forget", version_base=None)
    def _main(cfg: Any) -> None:
        report = run_or_exit("features.forget", run, cfg)
        if cfg.get("audit"):  # serving.audit.audit_event by default (conf/forget.yaml): the data layer imports no serving
            from hydra.utils import get_method

            get_method(str(cfg.audit))("user.forget", _cli_actor(), subject=subject_hash(report.user_key),
                                       status=report.status, rows_removed=report.rows_removed,
                                       artifacts=len(report.removed), bundles=report.bundles,
                                       retrain=len(report.retrain), pseudo_key_fingerprint=key_fingerprint())
        out = json.dumps(asdict(report), sort_keys=True)
        folder = tombstone_dir(Path(str(cfg.paths.artifacts))) / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{subject_hash(report.user_key)}.json").write_text(out + "\n")
        print(format_report(report))
        if report.status == "not found":
            print("not found: no artifact held this user; the tombstone keeps them out if they arrive later")
        print(out)
        if report.errors:  # printed above the JSON too; a forget that could not check everything is a failure
            for e in report.errors:
                print(f"features.forget: error: {e}", file=sys.stderr)
            sys.exit(1)

    _main()


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return f"cli:{os.getuid()}"


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
