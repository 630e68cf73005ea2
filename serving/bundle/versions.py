"""Bundle versions as an operator sees them: list, promote, roll back.

Every version under ``<bundles>/`` is immutable (``serving.bundle.publish``); the one the service serves is the
one ``<bundles>/LATEST`` names (replicas follow it within ``serve.watch_interval_s``). This module moves
``LATEST`` on purpose and keeps the record of it:

- ``list_versions(bundles_dir)``: one dict per complete version, oldest first: ``version``, ``created``,
  ``parent``, ``serving`` (LATEST names it), ``adds`` and ``figures`` (the offline figures in its manifest,
  each with the protocol they were measured under: the retriever's test metrics with ``trained_on``'s split,
  the ranker's with its ``protocol``, the index's recall against exact search).
- ``promote(bundles_dir, version)``: verify the version (manifest, every file's sha256), then move ``LATEST``
  to it (atomic rename) and append a record to ``<bundles>/promotions.jsonl``.
- ``rollback(bundles_dir, to=None)``: promote ``to``; ``None`` = the version that was serving before the
  current one was promoted (repeated rollbacks walk back through the promotions; when ``LATEST`` was
  moved by a publish and not by a promotion, the last version promoted on purpose).

``promotions.jsonl`` holds one JSON object per line: ``at`` (UTC), ``action`` (``promote`` / ``rollback``),
``version``, ``from`` (the version ``LATEST`` named before; null when none) and ``actor``. A lock file
(``<bundles>/.promotions.lock``) orders concurrent promotions. Promotions and rollbacks are written to the
audit log (``serving.audit.audit_event``) when that module is present.

The command line is ``python -m serving.bundles list|promote|rollback``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from serving.bundle.contract import (
    MANIFEST, BundleError, check_name, latest_name, list_versions as version_names, read_manifest, set_latest,
    verify_files,
)

log = logging.getLogger(__name__)

HISTORY = "promotions.jsonl"
_LOCK = ".promotions.lock"
RETRIEVER_FIGURES = ("test/ndcg@10", "test/hr@10", "test/recall@10", "test/mrr", "test/coverage@10")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def figures(manifest: dict[str, Any]) -> dict[str, Any]:
    """The offline figures a manifest records, each group with the protocol it was measured under."""
    out: dict[str, Any] = {}
    metrics = manifest.get("metrics") or {}
    if metrics:
        trained = manifest.get("trained_on") or {}
        protocol = metrics.get("protocol") if isinstance(metrics.get("protocol"), dict) else {
            "data": trained.get("data", manifest.get("data")), "split": trained.get("split"),
            "part": "test", "max_users": trained.get("max_users")}
        out["retriever"] = {"protocol": protocol, **{k.removeprefix("test/"): metrics[k]
                                                     for k in RETRIEVER_FIGURES if k in metrics}}
    ranker = manifest.get("ranker") or {}
    if ranker:
        out["ranker"] = {"protocol": ranker.get("protocol"),
                         **{k.removeprefix("test/"): v for k, v in ranker.items() if k.startswith("test/")}}
    index = manifest.get("index") or {}
    if "recall_at_k" in index:
        out["index"] = {"protocol": f"recall@{index.get('recall_k')} against exact search",
                        "recall": index["recall_at_k"], "backend": index.get("backend"), "name": index.get("name")}
    return out


def list_versions(bundles_dir: str | Path, *, verify: bool = False) -> list[dict[str, Any]]:
    """Every complete version under ``bundles_dir``, oldest first (by ``created_at``, then name). With
    ``verify`` each dict gets ``intact`` (every file's sha256 matches the manifest) and, when not, ``problem``."""
    root = Path(bundles_dir)
    serving = _latest_or_none(root)
    rows = []
    for name in version_names(root):
        m = read_manifest(root / name, validate=False)
        row = {"version": name, "created": m.get("created_at"), "parent": m.get("parent"),
               "serving": name == serving, "adds": m.get("adds") or [], "figures": figures(m)}
        if verify:
            try:
                verify_files(root / name, m)
                row["intact"] = True
            except BundleError as e:
                row["intact"], row["problem"] = False, str(e)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["created"] or ""), r["version"]))
    return rows


def history(bundles_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``promotions.jsonl``, oldest first (an unreadable line is skipped with a warning)."""
    path = Path(bundles_dir) / HISTORY
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d: not JSON, skipped", path, i)
    return out


def promote(bundles_dir: str | Path, version: str, *, actor: str = "cli", verify: bool = True,
            _action: str = "promote") -> dict[str, Any]:
    """Serve ``version``: check it (manifest; with ``verify`` every file's sha256), move ``LATEST`` to it, record the
    promotion. Returns the record. ``BundleError`` (naming the version and the file) when it is not servable."""
    root = Path(bundles_dir)
    check_name(version, "version")
    folder = root / version
    if not (folder / MANIFEST).is_file():
        known = ", ".join(version_names(root)) or "none"
        raise BundleError(f"version {version!r}: not found under {root} (versions: {known})")
    m = read_manifest(folder)
    if verify:
        verify_files(folder, m)
    with _locked(root):
        before = _latest_or_none(root)
        set_latest(root, version)
        record = {"at": _now(), "action": _action, "version": version, "from": before, "actor": actor}
        _append(root / HISTORY, record)
    _audit(_action, actor, version=version, previous=before, bundles=str(root))
    log.info("%s: LATEST %s -> %s", _action, before, version)
    return record


def rollback_target(bundles_dir: str | Path) -> str:
    """The version ``rollback(bundles_dir)`` would serve (``BundleError`` when there is none)."""
    root = Path(bundles_dir)
    current = _latest_or_none(root)
    records = history(root)
    for r in reversed(records):
        if r.get("action") == "promote" and r.get("version") == current:
            prev = r.get("from")
            if prev and prev != current:
                return prev
            break
    else:
        known = {r.get("version") for r in records} | {r.get("from") for r in records}
        if current not in known:  # LATEST moved by a publish, not a promotion: the last version promoted on purpose
            for r in reversed(records):
                if r.get("version") and r["version"] != current:
                    return r["version"]
    raise BundleError(f"{root / HISTORY}: no version was serving before {current!r}; "
                      "name one with `rollback --to VERSION` (see `python -m serving.bundles list`)")


def rollback(bundles_dir: str | Path, to: str | None = None, *, actor: str = "cli",
             verify: bool = True) -> dict[str, Any]:
    """Serve ``to`` (any listed version), or the one serving before the current one was promoted; recorded as a
    ``rollback``. Returns the record."""
    target = to or rollback_target(bundles_dir)
    return promote(bundles_dir, target, actor=actor, verify=verify, _action="rollback")


# --------------------------------------------------------------------------------------------------


def _latest_or_none(root: Path) -> str | None:
    try:
        return latest_name(root)
    except BundleError:
        return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _audit(action: str, actor: str, **details: Any) -> None:
    """Record ``action`` in the audit log when ``serving.audit`` exists (it is optional for this module)."""
    try:
        from serving.audit import audit_event
    except ImportError:
        return
    try:
        audit_event(f"bundle.{action}", actor, **details)
    except Exception as e:  # noqa: BLE001 - LATEST has moved; say loudly that the audit log lacks it
        log.error("bundle.%s of %s not written to the audit log: %s", action, details.get("version"), e)
