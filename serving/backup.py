"""Backup and restore of the state a shop depends on: ``python -m serving.backup backup|restore|verify``.

    python -m serving.backup backup --to /backups            # -> /backups/shoprec-<UTC time>/
    python -m serving.backup verify /backups/shoprec-20261204-200000
    python -m serving.backup restore /backups/shoprec-20261204-200000 --to /srv/shop/artifacts

The parts (folders under the artifacts root, ``$SHOPREC_ARTIFACTS`` or ``artifacts``; absent ones are skipped):
``bundles`` (every version, ``LATEST``, ``promotions.jsonl``), ``processed`` (prepared data), ``profiles``,
``serve`` (the event log, experiment exposures and attributions), ``campaigns`` (audiences, contact log),
``privacy`` (tombstones, consent records), ``audit`` (the audit log). The pseudonymisation key
(``secrets/``) is NOT in a backup: keep it in a secret store; a restore serves known users only with the same
key (the service refuses a bundle made with another one).

A backup is a directory (an S3-compatible store was not available here: no MinIO server installs from this
machine's package sources; copy the directory with any S3 tool). It is written to a temporary folder and
renamed, and its ``manifest.json`` lists every file with its sha256 and size. ``verify`` and ``restore`` check
every file first: a changed, missing or unlisted file is refused naming it (``BackupError``), and nothing is
restored. ``restore`` refuses a target whose parts exist already unless ``--force`` (then each part is
replaced by a rename). Backups and restores are written to the audit log when ``serving.audit`` exists.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from features.artifacts import atomic_dir, code_version, file_sha256, write_json

PARTS = ("bundles", "processed", "profiles", "serve", "campaigns", "privacy", "audit")
MANIFEST = "manifest.json"
KIND = "shoprec-backup"


class BackupError(ValueError):
    """A backup that is incomplete or whose files do not match their checksums; the message names the file."""


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (following links to files), skipping temporary and lock files."""
    out = []
    for p in sorted(folder.rglob("*")):
        name = p.name
        if ".tmp-" in name or name.endswith(".lock") or not p.is_file():
            continue
        out.append(p)
    return out


def backup(artifacts: str | Path, dest: str | Path, parts: tuple[str, ...] = PARTS, *,
           actor: str = "cli") -> Path:
    """Copy ``parts`` of ``artifacts`` into a new ``<dest>/shoprec-<time>/`` with a checksummed manifest."""
    artifacts, dest = Path(artifacts), Path(dest)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts: {unknown[0]!r} is not one of {', '.join(PARTS)}")
    name = f"shoprec-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    files: dict[str, dict[str, Any]] = {}
    present = []
    with atomic_dir(dest / name) as tmp:
        for part in parts:
            src = artifacts / part
            if not src.is_dir():
                continue
            present.append(part)
            for f in _files(src):
                rel = f.relative_to(artifacts).as_posix()
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
                files[rel] = {"sha256": file_sha256(target), "bytes": target.stat().st_size}
        write_json(tmp / MANIFEST, {"kind": KIND, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"), "source": str(artifacts.resolve()), "parts": present, "code_version": code_version(),
            "files": files})
    _audit("backup.create", actor, backup=name, parts=present, files=len(files))
    return dest / name


def verify(folder: str | Path) -> dict[str, Any]:
    """The manifest of backup ``folder`` after checking every file (``BackupError`` naming the first bad one)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupError(f"{path}: missing (not a backup folder)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BackupError(f"{path}: not valid JSON ({e})") from None
    if m.get("kind") != KIND or not isinstance(m.get("files"), dict):
        raise BackupError(f"{path}: not a shoprec backup manifest (kind={m.get('kind')!r})")
    for rel, info in sorted(m["files"].items()):
        p = folder / rel
        if not p.is_file():
            raise BackupError(f"{p}: listed in the backup manifest but missing")
        if p.stat().st_size != info["bytes"] or file_sha256(p) != info["sha256"]:
            raise BackupError(f"{p}: sha256 differs from the backup manifest (corrupt or changed): refused")
    extra = [f.relative_to(folder).as_posix() for f in _files(folder) if f.name != MANIFEST or f.parent != folder]
    extra = [r for r in extra if r not in m["files"]]
    if extra:
        raise BackupError(f"{folder / extra[0]}: not listed in the backup manifest ({len(extra)} such file(s)): refused")
    return m


def restore(folder: str | Path, artifacts: str | Path, *, force: bool = False, actor: str = "cli") -> dict[str, Any]:
    """Verify backup ``folder``, then put its parts under ``artifacts`` (each part: temporary folder + rename).
    Returns ``{"parts", "files"}``."""
    folder, artifacts = Path(folder), Path(artifacts)
    m = verify(folder)
    busy = [p for p in m["parts"] if (artifacts / p).exists() and any((artifacts / p).iterdir())]
    if busy and not force:
        raise ValueError(f"{artifacts / busy[0]}: exists and is not empty; restore into a fresh folder or pass --force")
    artifacts.mkdir(parents=True, exist_ok=True)
    for part in m["parts"]:
        tmp = artifacts / f".{part}.restore-{uuid.uuid4().hex[:8]}"
        shutil.copytree(folder / part, tmp)
        old = None
        if (artifacts / part).exists():
            old = artifacts / f".{part}.old-{uuid.uuid4().hex[:8]}"
            os.replace(artifacts / part, old)
        os.replace(tmp, artifacts / part)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _audit("backup.restore", actor, backup=folder.name, parts=m["parts"], files=len(m["files"]))
    return {"parts": m["parts"], "files": len(m["files"])}


def _audit(action: str, actor: str, **details: Any) -> None:
    try:
        from serving.audit import audit_event
    except ImportError:
        return
    try:
        audit_event(action, actor, **details)
    except Exception as e:  # noqa: BLE001 - the backup is done; say loudly that the audit log lacks it
        print(f"serving.backup: warning: {action} not written to the audit log: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from features.cli import run_or_exit

    art = os.environ.get("SHOPREC_ARTIFACTS", "artifacts")
    ap = argparse.ArgumentParser(prog="python -m serving.backup", description=__doc__.splitlines()[0])
    ap.add_argument("--actor", default=os.environ.get("USER", "cli"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--artifacts", default=art)
    b.add_argument("--to", required=True, help="the folder that receives shoprec-<time>/")
    b.add_argument("--parts", default=",".join(PARTS))
    v = sub.add_parser("verify")
    v.add_argument("backup")
    r = sub.add_parser("restore")
    r.add_argument("backup")
    r.add_argument("--to", default=art, help="the artifacts folder to restore into")
    r.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    name = "serving.backup"
    if args.cmd == "backup":
        parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
        out = run_or_exit(name, lambda: backup(args.artifacts, args.to, parts, actor=args.actor))
        m = json.loads((out / MANIFEST).read_text())
        print(f"backup: {out} ({len(m['files'])} files; parts {', '.join(m['parts'])}; the pseudonymisation key "
              "is not included)")
        print(json.dumps({"backup": str(out), "parts": m["parts"], "files": len(m["files"])}))
    elif args.cmd == "verify":
        m = run_or_exit(name, verify, args.backup)
        print(f"backup {args.backup}: {len(m['files'])} files, every sha256 matches")
        print(json.dumps({"backup": args.backup, "files": len(m["files"]), "ok": True}))
    else:
        res = run_or_exit(name, lambda: restore(args.backup, args.to, force=args.force, actor=args.actor))
        print(f"restored {res['files']} files into {args.to} (parts {', '.join(res['parts'])})")
        print(json.dumps({"restored": args.backup, "to": args.to, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
