"""Publishing bundle versions: a new one from scratch, or a derived one that adds files to a parent.

A published version never changes. ``new_version`` writes a fresh bundle (``training.export``, the
synthetic and SVD bundles): the caller writes files into a temporary folder; on success the file hashes
and common fields go into ``manifest.json``, the folder is renamed into place and, by default, ``LATEST``
moves to it. ``publish_derived`` adds or replaces files of an existing version (an index, a ranker,
bought-together rules, a campaign model): it writes a NEW sibling version ``<base>.<n>`` holding the
parent's files (hard links, so no bytes are copied) plus the new ones, records ``parent`` and what it
added, and moves ``LATEST``. Each step is atomic (temporary folder/file + rename): a crash leaves no
half-written version and ``LATEST`` always names a complete one.

Manifest fields written here (``serving/bundle_layout.md``): ``schema_version``, ``name``, ``created_at``,
``code_version``, ``pseudo_key_fingerprint``, ``files``, and for derived versions ``parent`` and ``adds``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from features.artifacts import code_version
from features.artifacts import file_sha256
from serving.bundle.contract import (
    MANIFEST, SCHEMA_VERSION, BundleError, bundle_files, check_name, check_pseudo_key, file_hashes, latest_name,
    pseudo_key_fingerprint, read_manifest, set_latest, verify_files, write_manifest,
)

log = logging.getLogger(__name__)

_DERIVED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")


@dataclass
class Draft:
    """A version being written: put files under ``path``; ``manifest`` is written at the end."""

    path: Path
    name: str
    manifest: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _common_fields(name: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "name": name, "created_at": _now(), "code_version": code_version(),
            "pseudo_key_fingerprint": pseudo_key_fingerprint()}


def _claim(final: Path) -> None:
    """Reserve the folder name ``final`` (``BundleError`` if a version of that name exists): versions are
    never replaced."""
    try:
        final.mkdir()
    except FileExistsError:
        raise BundleError(f"{final}: a bundle version of this name exists already (versions are immutable)") from None


def _claim_derived(root: Path, parent: str, name: str | None) -> str:
    """Reserve ``name`` (or the next free ``<base>.<n>``, retrying when a concurrent writer took it)."""
    if name is not None:
        _claim(root / check_name(name, "derived bundle version"))
        return name
    for _ in range(1000):
        name = next_derived_name(root, parent)
        try:
            (root / name).mkdir()
            return name
        except FileExistsError:
            continue
    raise BundleError(f"{root}: no free version name after {parent}")


def _abandon(tmp: Path, final: Path) -> None:
    """Undo an unfinished version: the temporary folder and the (still empty) reserved name."""
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        final.rmdir()


@contextlib.contextmanager
def _staged(root: Path, name: str) -> Iterator[Path]:
    """A temporary folder for the reserved version ``name``: renamed onto it when the block succeeds (atomic: the
    reserved folder is empty), removed with the reservation when it raises."""
    final = root / name
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        _abandon(tmp, final)
        raise


def _move_latest(root: Path, name: str, parent: str | None = None) -> None:
    current = latest_name(root)
    if parent is not None and current is not None and current != parent:
        log.warning("LATEST named %s, not %s: the new version %s derives from %s and lacks what %s added",
                    current, parent, name, parent, current)
    set_latest(root, name)


@contextlib.contextmanager
def new_version(bundles_root: str | Path, name: str, *, latest: bool = True,
                manifest: Mapping[str, Any] | None = None) -> Iterator[Draft]:
    """Write a new version ``<bundles_root>/<name>/``: yields a ``Draft`` whose ``path`` is a temporary
    folder; fill it and ``draft.manifest``. On success the manifest gets the common fields and the hashes
    of every file, the folder is renamed into place and (``latest``) ``LATEST`` names it. On an exception
    nothing is published."""
    root = Path(bundles_root)
    check_name(name, "new bundle version")
    root.mkdir(parents=True, exist_ok=True)
    _claim(root / name)  # fails at once when the name is taken
    with _staged(root, name) as tmp:
        draft = Draft(tmp, name, dict(manifest or {}))
        yield draft
        write_manifest(tmp, {"parent": None, **draft.manifest, **_common_fields(name), "files": file_hashes(tmp)})
    if latest:
        _move_latest(root, name)
    log.info("published bundle %s%s", root / name, " (LATEST)" if latest else "")


def next_derived_name(bundles_root: str | Path, parent: str) -> str:
    """``<base>.<n>``: ``base`` is the parent's name without a ``.<n>`` suffix, ``n`` one more than any
    sibling of that base."""
    m = _DERIVED.match(parent)
    base = m.group("base") if m else parent
    taken = [int(mm.group("n")) for p in Path(bundles_root).iterdir()
             if (mm := _DERIVED.match(p.name)) and mm.group("base") == base]
    return f"{base}.{max(taken, default=0) + 1}"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the parent's bytes are immutable: share them
    except OSError:
        shutil.copy2(src, dst)


def _add(src: Path, dst: Path) -> None:
    """Copy a file or a folder to ``dst``, replacing what the parent had there."""
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    elif src.is_file():
        shutil.copy2(src, dst)
    else:
        raise BundleError(f"{src}: not found (a file to add to the bundle as {dst.name})")


def _hashes_reusing_parent(folder: Path, parent_dir: Path, parent_files: Mapping[str, str]) -> dict[str, str]:
    """``file_hashes(folder)``, taking the (verified) parent's hash of every file that is still a hard link to
    the parent's file: a large bundle is not hashed twice."""
    out = {}
    for rel, p in bundle_files(folder):
        q = parent_dir / rel
        same = rel in parent_files and q.is_file() and os.path.samefile(p, q)
        out[rel] = parent_files[rel] if same else file_sha256(p)
    return out


def publish_derived(parent_dir: str | Path, *, add_files: Mapping[str, str | Path] | None = None,
                    write: Callable[[Path], None] | None = None,
                    manifest_updates: Mapping[str, Any] | None = None, remove: tuple[str, ...] = (),
                    name: str | None = None, latest: bool = True, verify: bool = True) -> Path:
    """Publish a new version next to ``parent_dir``: the parent's files, plus ``add_files``
    (``{relative path in the bundle: source file or folder}``, replacing the parent's file or folder of that
    name), plus whatever ``write(folder)`` writes into an empty staging folder (laid over the parent's files the
    same way), minus ``remove`` (relative paths). The parent's files are hard links in the new version: they
    are only ever replaced (unlink + new file), never written in place, so the parent cannot change. The manifest is the
    parent's with ``manifest_updates`` merged in (top-level keys), ``parent`` = the parent's name, ``adds``
    = the relative paths added, fresh hashes of every file. ``name`` defaults to ``next_derived_name``.
    ``latest``: move ``LATEST`` of the parent's folder to it (a warning when ``LATEST`` did not name the parent:
    what the newer version added is not in this one). Returns the new folder. The parent is verified first
    (``verify``): a derived version never inherits a corrupt file. The parent's ``pseudo_key_fingerprint`` is
    kept, and must be this process's key's (added files may hold pseudonyms)."""
    parent_dir = Path(parent_dir)
    root = parent_dir.parent
    parent_m = read_manifest(parent_dir, validate=False)
    if parent_m.get("pseudo_key_fingerprint"):
        check_pseudo_key(parent_dir, parent_m)
    parent_files = dict(parent_m.get("files") or {}) if verify else {}
    if verify:
        verify_files(parent_dir, parent_m, required=(MANIFEST,))
    name = _claim_derived(root, parent_dir.name, name)
    with _staged(root, name) as tmp:
        for rel, p in bundle_files(parent_dir):
            _link_or_copy(p, tmp / rel)
        for rel in remove:
            target = tmp / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        added = []
        for rel, src in (add_files or {}).items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts or rel == MANIFEST:
                raise BundleError(f"add_files: {rel!r} is not a relative path inside the bundle")
            _add(Path(src), tmp / rel)
            added.append(rel)
        if write is not None:
            staging = root / f".{name}.write-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                write(staging)
                for rel, p in bundle_files(staging):
                    _add(p, tmp / rel)
                    added.append(rel)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        common = _common_fields(name)
        common["pseudo_key_fingerprint"] = parent_m.get("pseudo_key_fingerprint") or common["pseudo_key_fingerprint"]
        m = {**parent_m, **dict(manifest_updates or {}), **common, "parent": parent_dir.name,
             "adds": sorted(set(added)) + [f"-{r}" for r in remove],
             "files": _hashes_reusing_parent(tmp, parent_dir, parent_files)}
        write_manifest(tmp, m)
    if latest:
        _move_latest(root, name, parent_dir.name)
    log.info("published bundle %s (parent %s, adds %s)%s", root / name, parent_dir.name, m["adds"],
             " (LATEST)" if latest else "")
    return root / name
