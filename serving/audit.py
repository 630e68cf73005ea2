"""Append-only, hash-chained audit log of admin and privacy-relevant actions.

Every record is one JSON line holding ``seq`` (its position, from 0), ``ts`` (UTC, ISO 8601), ``action``,
``actor``, ``details``, ``prev`` (the ``hash`` of the record before it; 64 zeros for the first) and ``hash``
(SHA-256 of the record's canonical JSON without ``hash``). Editing, deleting or reordering any record breaks
the chain at that position, which ``verify_chain`` reports.

Several processes may append at once (the service's replicas, a CLI job): each append holds an exclusive
``flock`` on the log file while it reads the last record and writes the next one, and ``fsync``s before
releasing it. Records name actors and subjects by fingerprints or pseudonymised keys, never by raw personal
data: ``actor`` is e.g. ``apikey:<fingerprint>`` or ``cli:<os user>``.

The log lives at ``$SHOPREC_AUDIT_LOG`` (default ``${SHOPREC_ARTIFACTS:-artifacts}/audit/audit.jsonl``; the
service sets it from ``serve.privacy.audit_log`` when unset).
``python -m serving.audit verify [--path P]`` checks the chain; ``python -m serving.audit tail [-n N]`` shows
the last records.
"""
from __future__ import annotations

import argparse
import fcntl
import getpass
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AUDIT_ENV = "SHOPREC_AUDIT_LOG"
DEFAULT_PATH = Path("artifacts") / "audit" / "audit.jsonl"   # under $SHOPREC_ARTIFACTS when that is set
GENESIS = "0" * 64
_TAIL_BYTES = 1 << 16


class AuditChainError(ValueError):
    """The audit log's chain is broken; ``position`` is the 0-based line number of the first bad record."""

    def __init__(self, position: int, reason: str, path: Path | str):
        self.position = position
        self.reason = reason
        super().__init__(f"{path}: audit record at position {position} (line {position + 1}): {reason}")


def audit_path() -> Path:
    """Where the audit log lives: ``$SHOPREC_AUDIT_LOG``, else ``${SHOPREC_ARTIFACTS:-artifacts}/audit/audit.jsonl``."""
    if os.environ.get(AUDIT_ENV):
        return Path(os.environ[AUDIT_ENV])
    return Path(os.environ.get("SHOPREC_ARTIFACTS") or "artifacts") / "audit" / "audit.jsonl"


def cli_actor() -> str:
    """The actor of a command-line job: ``cli:<os user>`` (an operator account, not a shop customer)."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"cli:{user}"


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON (sorted keys, no spaces), ``hash`` field excluded."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _last_line(fh) -> bytes | None:
    """The last non-empty line of an open binary file, read from its end."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return None
    chunk = min(size, _TAIL_BYTES)
    while True:
        fh.seek(size - chunk)
        data = fh.read(chunk).rstrip(b"\n")
        cut = data.rfind(b"\n")
        if cut >= 0 or chunk == size:
            return data[cut + 1:] if data else None
        chunk = min(size, chunk * 4)


def audit_event(action: str, actor: str, path: Path | str | None = None, **details: Any) -> dict[str, Any]:
    """Append one record to the audit log and return it.

    ``details`` must be JSON-serialisable (other values are written as their ``str``) and must not hold raw
    personal data: pass pseudonymised keys, counts, file hashes, campaign ids. ``path`` overrides the log's
    location (tests); the default is ``audit_path()``.
    """
    if not action or not isinstance(action, str):
        raise ValueError(f"audit action must be a non-empty string, got {action!r}")
    if not actor or not isinstance(actor, str):
        raise ValueError(f"audit actor must be a non-empty string, got {actor!r}")
    target = Path(path) if path is not None else audit_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            last = _last_line(fh)
            if last is None:
                seq, prev = 0, GENESIS
            else:
                try:
                    tail = json.loads(last)
                    seq, prev = int(tail["seq"]) + 1, str(tail["hash"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise AuditChainError(-1, f"the last record is unreadable ({exc}); run "
                                              f"`python -m serving.audit verify`", target) from exc
            record: dict[str, Any] = {
                "seq": seq,
                "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "action": action,
                "actor": actor,
                "details": json.loads(_canonical(details)),
                "prev": prev,
            }
            record["hash"] = record_hash(record)
            fh.seek(0, os.SEEK_END)
            fh.write((_canonical(record) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return record


def try_audit_event(action: str, actor: str, **details: Any) -> dict[str, Any] | None:
    """``audit_event`` for callers whose own work must not fail because the log cannot be written
    (e.g. counting an authentication failure): the error is logged and None returned."""
    try:
        return audit_event(action, actor, **details)
    except Exception as exc:  # noqa: BLE001 - the caller's request goes on; the failure is logged loudly
        import logging
        logging.getLogger(__name__).error("could not write the audit record %s: %s", action, exc)
        return None


def read_records(path: Path | str | None = None) -> list[dict[str, Any]]:
    """Every record of the log (no check; use ``verify_chain`` for that). A missing log has none."""
    target = Path(path) if path is not None else audit_path()
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


def verify_chain(path: Path | str | None = None) -> int:
    """Check every record's hash and link; return the number of records (a missing log has 0).

    Raises ``AuditChainError`` naming the position of the first record that is unreadable, altered
    (its hash does not match its content), out of sequence, or not linked to the record before it.
    """
    target = Path(path) if path is not None else audit_path()
    if not target.exists():
        return 0
    prev = GENESIS
    n = 0
    with target.open("rb") as fh:
        for position, raw in enumerate(fh):
            line = raw.rstrip(b"\n")
            if not line.strip():
                raise AuditChainError(position, "empty line", target)
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise AuditChainError(position, f"not JSON ({exc})", target) from exc
            if not isinstance(record, dict) or "hash" not in record:
                raise AuditChainError(position, "not an audit record (no hash)", target)
            if record.get("seq") != position:
                raise AuditChainError(position, f"seq is {record.get('seq')!r}, expected {position} "
                                                f"(a record was removed or reordered)", target)
            if record.get("prev") != prev:
                raise AuditChainError(position, "prev does not match the hash of the record before it", target)
            if record_hash(record) != record["hash"]:
                raise AuditChainError(position, "content altered (hash mismatch)", target)
            prev = record["hash"]
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.audit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check the hash chain")
    v.add_argument("--path", default=None, help=f"log file (default ${AUDIT_ENV} or {DEFAULT_PATH})")
    t = sub.add_parser("tail", help="print the last records")
    t.add_argument("--path", default=None)
    t.add_argument("-n", type=int, default=10)
    args = parser.parse_args(argv)
    target = Path(args.path) if args.path else audit_path()
    if args.cmd == "tail":
        for rec in read_records(target)[-args.n:]:
            print(_canonical(rec))
        return 0
    try:
        n = verify_chain(target)
    except AuditChainError as exc:
        print(f"audit chain BROKEN: {exc}", file=sys.stderr)
        print(json.dumps({"path": str(target), "ok": False, "position": exc.position, "reason": exc.reason}))
        return 1
    print(f"audit chain OK: {n} records in {target}", file=sys.stderr)
    print(json.dumps({"path": str(target), "ok": True, "records": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
