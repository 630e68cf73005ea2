"""The service's part of the right to be forgotten (``python -m features.forget`` runs it as a configured step,
``DELETE /v1/users/{user_id}`` calls ``forget_everywhere``).

What it removes, for one pseudonymised ``user_key``:

- the event log (``serve.store.event_log``): rewritten without the user's lines under the log's lock
  (``EventStore.forget_user``: running replicas replay the new file at their next read), its ``.torn`` file;
  with ``serve.store.kind=redis`` also the user's sequence and not-yet-drained stream entries
  (``RedisEventStore.forget_user``);
- the experiments' exposure log and the attributions of the removed requests and events
  (``serve.experiments.log_dir``);
- campaign audiences and the contact log (every Parquet/CSV under ``<artifacts>/campaigns``);
- bundles. A published version never changes its content for any other reason, so: the version ``LATEST``
  names gets a derived version without the user (``publish_derived``, ``LATEST`` moves to it; a running
  service swaps it in), and every *other* version that holds the user is redacted in place (its per-user tables
  rewritten without the user, new file hashes and a ``forgotten`` tally in its manifest). Erasure is the one
  change a published version undergoes: otherwise a rollback would bring the user back.

Every version and run trained on the user's events is listed for retraining (``ForgetReport.retrain``).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from features.artifacts import file_sha256
from features.forget import ForgetReport, forget_in_files, parquet_drop, text_drop, trained_on
from serving.bundle.contract import (BundleError, bundle_files, check_pseudo_key, latest_name, list_versions,
                                     read_manifest, write_manifest)
from serving.bundle.publish import publish_derived
from serving.store import DurableLog, EventStore

log = logging.getLogger(__name__)


def _rel(path: Path, artifacts: Path) -> str:
    try:
        return str(path.relative_to(artifacts))
    except ValueError:
        return str(path)


def forget_event_log(path: Path, user_key: str, store: Any = None) -> tuple[int, set[str]]:
    """Remove the user's events from the CSV event log (through ``store`` when it is this log's ``EventStore``);
    returns (events removed, their event ids)."""
    if not path.exists():
        return 0, set()
    ids: set[str] = set()

    def drop(line: str) -> bool:
        if user_key not in line:
            return False
        fields = line.split(",")
        if fields[0] == user_key:
            ids.add(fields[-1])
            return True
        return False

    if isinstance(store, EventStore) and store.path.resolve() == path.resolve():
        before = store.log.remove_lines(drop)
        store.catch_up()
        return len(before), ids
    gone = DurableLog(path, header=None).remove_lines(drop)
    return len(gone), ids


def forget_experiment_logs(log_dir: Path, user_key: str, event_ids: set[str]) -> dict[str, int]:
    """Remove the user's exposures, and the attributions of their requests and of their removed events."""
    out: dict[str, int] = {}
    exposures = log_dir / "exposures.jsonl"
    requests: set[str] = set()
    if exposures.exists():
        def drop_exposure(line: str) -> bool:
            if user_key not in line:
                return False
            try:
                rec = json.loads(line)
            except ValueError:
                return True
            hit = rec.get("user_key") == user_key or rec.get("unit") == user_key
            if hit:
                requests.add(str(rec.get("request_id")))
            return hit
        out[str(exposures)] = len(DurableLog(exposures).remove_lines(drop_exposure))
    attributions = log_dir / "attributions.jsonl"
    if attributions.exists() and (requests or event_ids):
        def drop_attribution(line: str) -> bool:
            try:
                rec = json.loads(line)
            except ValueError:
                return False
            return str(rec.get("request_id")) in requests or str(rec.get("event_id")) in event_ids
        out[str(attributions)] = len(DurableLog(attributions).remove_lines(drop_attribution))
    return out


def _holds(bundle_dir: Path, user_key: str) -> list[str]:
    """The bundle's per-user tables (Parquet with a ``user_key`` column) that hold the key."""
    import pyarrow.compute as pc

    hits = []
    for rel, p in bundle_files(bundle_dir):
        if p.suffix != ".parquet" or "user_key" not in pq.read_schema(p).names:
            continue
        col = pq.read_table(p, columns=["user_key"])["user_key"]
        if pc.any(pc.fill_null(pc.equal(pc.cast(col, "string"), user_key), False)).as_py():
            hits.append(rel)
    return hits


def _redact_in_place(bundle_dir: Path, manifest: dict[str, Any], tables: list[str], user_key: str) -> dict[str, int]:
    """Rewrite a non-serving version's per-user tables without the user (new inodes: hard-linked siblings keep
    theirs until redacted too) and refresh its manifest's hashes."""
    removed = {rel: parquet_drop(bundle_dir / rel, user_key) for rel in tables}
    n = sum(removed.values())
    files = dict(manifest.get("files") or {})
    for rel in tables:
        files[rel] = file_sha256(bundle_dir / rel)
    t = dict(manifest.get("forgotten") or {})
    t.update(n_users=int(t.get("n_users", 0)) + 1, n_rows=int(t.get("n_rows", 0)) + n,
             updated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_manifest(bundle_dir, {**manifest, "files": files, "forgotten": t})  # temporary file + rename
    return removed


def forget_bundles(bundles_root: Path, user_key: str, report: ForgetReport, artifacts: Path) -> Path | None:
    """Derived version without the user for the served one; in-place redaction of the others. Returns the new
    served version's folder, if one was published."""
    if not bundles_root.is_dir():
        return None
    latest = latest_name(bundles_root)
    published = None
    for name in list_versions(bundles_root):
        bdir = bundles_root / name
        try:
            manifest = read_manifest(bdir, validate=False)
        except Exception as e:  # noqa: BLE001 - an unreadable version is reported, the others still processed
            log.warning("bundle %s: manifest unreadable (%s): not checked for the user", bdir, e)
            continue
        try:  # made with another key, the user's pseudonym there is another one: cannot be checked
            check_pseudo_key(bdir, manifest)
        except BundleError as e:
            report.errors.append(str(e))
            continue
        tables = _holds(bdir, user_key)
        if not tables:
            continue
        for d in trained_on(manifest):
            if d not in report.datasets:
                report.datasets.append(d)
        report.retrain.append(_rel(bdir, artifacts))
        if name == latest:
            counts: dict[str, int] = {}

            def write(folder: Path, src: Path = bdir, tables: list[str] = tables) -> None:
                for rel in tables:
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (folder / rel).write_bytes((src / rel).read_bytes())
                    counts[rel] = parquet_drop(folder / rel, user_key)

            t = dict(manifest.get("forgotten") or {})
            t.update(n_users=int(t.get("n_users", 0)) + 1,
                     updated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            published = publish_derived(bdir, write=write, manifest_updates={"forgotten": t})
            for rel, n in counts.items():
                report.add({f"{_rel(bdir, artifacts)}/{rel}": n})
            report.bundles[name] = f"derived {published.name} without the user (LATEST)"
            # the served version itself is redacted too, so that a rollback cannot bring the user back
            _redact_in_place(bdir, manifest, tables, user_key)
        else:
            removed = _redact_in_place(bdir, manifest, tables, user_key)
            report.add({f"{_rel(bdir, artifacts)}/{rel}": k for rel, k in removed.items()})
            report.bundles[name] = "redacted in place (not serving)"
    return published


def forget_service(user_key: str, cfg: Any, report: ForgetReport, *, store: Any = None) -> Path | None:
    """The configured step of ``features.forget``: every service artifact. ``store``: the running service's
    online store (the admin endpoint passes it); else a Redis store is opened when ``serve.store.kind=redis``."""
    artifacts = Path(str(cfg.paths.artifacts))
    serve = cfg.serve
    store_kind = str(serve.store.get("kind", "file"))
    n, event_ids = forget_event_log(Path(str(serve.store.event_log)), user_key, store)
    report.add({_rel(Path(str(serve.store.event_log)), artifacts): n})
    torn = Path(str(serve.store.event_log) + ".torn")
    if torn.exists():
        report.add({_rel(torn, artifacts): text_drop(torn, user_key)})
    if store is not None and not isinstance(store, EventStore) and hasattr(store, "forget_user"):
        report.add({f"live store ({store_kind})": int(store.forget_user(user_key))})
    elif store is None and store_kind == "redis":
        from serving.stores import open_store

        live = open_store(serve.store)
        report.add({"live store (redis)": int(live.forget_user(user_key))})
    log_dir = Path(str(serve.experiments.log_dir))
    if log_dir.is_dir():
        for path, k in forget_experiment_logs(log_dir, user_key, event_ids).items():
            report.add({_rel(Path(path), artifacts): k})
        for p in sorted(log_dir.glob("*.torn")):
            report.add({_rel(p, artifacts): text_drop(p, user_key)})
    campaigns = artifacts / "campaigns"
    if campaigns.is_dir():
        report.add(forget_in_files(campaigns, user_key, artifacts))
    return forget_bundles(Path(str(serve.bundles_dir)), user_key, report, artifacts)
