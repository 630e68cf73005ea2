"""The bundle contract: file names, schema version, manifest, version names, ``LATEST``, sequence encoding.

A bundle is one immutable folder ``<bundles root>/<version name>/`` (``serving/bundle_layout.md``): what
training hands to serving. This module is the only place that knows its file names and manifest fields,
reads and checks a manifest, verifies file hashes, resolves a version name (or ``LATEST``) to a folder,
moves ``LATEST`` (temporary file + rename) and encodes item histories for ``encoder.onnx``. Writing new
versions is ``serving.bundle.publish``; reading the files into memory ``serving.bundle.tables`` and
``serving.bundle.load``. Training may import this package; serving never imports training.

Every problem raises ``BundleError`` (a ``ValueError``) with a message that names the file and the field.
"""
from __future__ import annotations

import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from features.artifacts import file_sha256

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# file names (relative to the bundle folder)
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEMS = "items.parquet"
USERS = "users.parquet"
ENCODER = "encoder.onnx"
USER_FEATURES_TABLE = "user_features.parquet"
USER_FEATURES_SPEC = "user_features.json"
RANKER_ONNX = "ranker.onnx"
RANKER_JSON = "ranker.json"
RANKER_TORCH = "ranker_torch.pt"  # the ranker's torch weights: the ranker on CUDA where ONNX Runtime has no CUDA provider
BOUGHT_TOGETHER = "bought_together.parquet"
INDEX_DIR = "index"
CAMPAIGNS_DIR = "campaigns"
LATEST = "LATEST"

REQUIRED_FILES = (MANIFEST, ITEM_EMBEDDINGS, ITEMS, USERS, ENCODER)
REQUIRED_MANIFEST_KEYS = ("schema_version", "name", "dim", "n_items", "max_len")
ITEM_COLUMNS = ("item_id", "item_key", "category", "price", "popularity", "available")
USER_COLUMNS = ("user_id", "user_key", "history")

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]*$")


class BundleError(ValueError):
    """A missing, inconsistent or corrupt bundle; the message names the file and the field."""


# --------------------------------------------------------------------------------------------------
# Names, LATEST, versions


def check_name(name: str, where: str) -> str:
    """``name`` when it is a plain version name (one folder, no path, not hidden), else ``BundleError``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise BundleError(f"{where}: expected a bundle folder name, got {name!r}")
    return name


def latest_name(bundles_root: str | Path) -> str | None:
    """The version ``<bundles_root>/LATEST`` names, or None when there is no ``LATEST``."""
    path = Path(bundles_root) / LATEST
    if not path.exists():
        return None
    return check_name(path.read_text().strip(), str(path))


def resolve(bundles_root: str | Path, name: str | None = LATEST) -> Path:
    """The folder of version ``name`` under ``bundles_root``; ``name`` None or ``"LATEST"``: the one
    ``<bundles_root>/LATEST`` names. The folder must exist (``BundleError`` otherwise)."""
    root = Path(bundles_root)
    if name is None or name == LATEST:
        latest = root / LATEST
        if not latest.exists():
            raise BundleError(f"{latest}: not found (export a bundle with `python -m training.export` "
                              "or pass bundle=FOLDER)")
        name = latest_name(root)
        where = f"{latest}: names {name!r} but"
    else:
        check_name(name, f"bundle name under {root}")
        where = f"bundle {name!r}:"
    path = root / name
    if not path.is_dir():
        raise BundleError(f"{where} {path} is not a folder")
    return path


def resolve_bundle_dir(bundle: str | Path | None, bundles_root: str | Path) -> Path:
    """``bundle`` as given (a version name under ``bundles_root``, else a folder path), else ``LATEST``."""
    if bundle:
        if _NAME.match(str(bundle)) and (Path(bundles_root) / str(bundle)).is_dir():
            return Path(bundles_root) / str(bundle)
        if Path(bundle).is_dir():
            return Path(bundle)
        raise BundleError(f"bundle={bundle}: folder not found")
    return resolve(bundles_root, LATEST)


def set_latest(bundles_root: str | Path, name: str) -> Path:
    """Point ``<bundles_root>/LATEST`` at version ``name`` atomically (temporary file + rename)."""
    root = Path(bundles_root)
    check_name(name, "LATEST target")
    if not (root / name / MANIFEST).is_file():
        raise BundleError(f"{root / name / MANIFEST}: missing; LATEST can only name a complete bundle")
    tmp = root / f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / LATEST)
    return root / LATEST


def list_versions(bundles_root: str | Path) -> list[str]:
    """Names of the complete versions (folders with a manifest) under ``bundles_root``, sorted."""
    root = Path(bundles_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / MANIFEST).is_file())


# --------------------------------------------------------------------------------------------------
# Manifest


def read_manifest(bundle_dir: str | Path, *, validate: bool = True) -> dict[str, Any]:
    """``manifest.json`` of a bundle; with ``validate``: the required fields, the schema version and
    positive ``dim``/``n_items``/``max_len``."""
    path = Path(bundle_dir) / MANIFEST
    if not path.exists():
        raise BundleError(f"{path}: missing")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(m, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if not validate:
        return m
    for k in REQUIRED_MANIFEST_KEYS:
        if k not in m:
            raise BundleError(f"{path}: field {k!r} is missing")
    if m["schema_version"] != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version={m['schema_version']!r}, this server reads {SCHEMA_VERSION}")
    for k in ("dim", "n_items", "max_len"):
        if not isinstance(m[k], int) or isinstance(m[k], bool) or m[k] <= 0:
            raise BundleError(f"{path}: field {k!r}={m[k]!r} must be a positive integer")
    return m


def bundle_files(folder: str | Path) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of every file under ``folder`` (sub-folders too) except the manifest and hidden
    files, sorted: the files a manifest's ``files`` lists."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not any(part.startswith(".") for part in Path(rel).parts):
            out.append((rel, p))
    return out


def file_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``bundle_files(folder)``."""
    return {rel: file_sha256(p) for rel, p in bundle_files(folder)}


def check_required_files(bundle_dir: str | Path, required: Iterable[str] = REQUIRED_FILES) -> None:
    for f in required:
        if not (Path(bundle_dir) / f).exists():
            raise BundleError(f"{Path(bundle_dir) / f}: missing (required by serving/bundle_layout.md)")


def verify_files(bundle_dir: str | Path, manifest: Mapping[str, Any],
                 required: Iterable[str] = REQUIRED_FILES) -> None:
    """Every required file exists; every file in ``manifest.files`` has its sha256; when the manifest lists files,
    the folder holds no file it does not list (a version name pins its whole content)."""
    bundle_dir = Path(bundle_dir)
    check_required_files(bundle_dir, required)
    listed = manifest.get("files") or {}
    if listed:
        extra = [rel for rel, _ in bundle_files(bundle_dir) if rel not in listed]
        if extra:
            raise BundleError(f"{bundle_dir / extra[0]}: not listed in manifest.json files (added after the version "
                              f"was published; {len(extra)} such file(s)): publish a new version instead")
    for rel, digest in listed.items():
        p = bundle_dir / rel
        if not p.is_file():
            raise BundleError(f"{p}: listed in manifest.json files but missing")
        if file_sha256(p) != digest:
            raise BundleError(f"{p}: sha256 differs from manifest.json files[{rel!r}] (corrupt or replaced)")


def write_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` (sorted keys; temporary file + rename)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def pseudo_key_fingerprint(key: bytes | None = None) -> str:
    """The fingerprint of the pseudonymisation key (``features.privacy.key_fingerprint``) that a bundle records:
    its ``user_key`` values were made with that key."""
    from features.privacy import key_fingerprint

    return key_fingerprint(key)


def check_pseudo_key(bundle_dir: str | Path, manifest: Mapping[str, Any], key: bytes | None = None) -> None:
    """``BundleError`` when the manifest's ``pseudo_key_fingerprint`` is not the fingerprint of this process's key
    (every known user would look new); a bundle without the field passes with a warning."""
    from features.privacy import KeyMismatchError, check_key_fingerprint

    try:
        check_key_fingerprint(manifest.get("pseudo_key_fingerprint"), f"bundle {Path(bundle_dir) / MANIFEST}", key)
    except KeyMismatchError as e:
        raise BundleError(str(e)) from e


# --------------------------------------------------------------------------------------------------
# Sequence encoding: what encoder.onnx takes


def encode_sequences(histories: Sequence[Sequence[int] | np.ndarray], max_len: int) -> np.ndarray:
    """``item_seq`` of ``encoder.onnx``: int64 ``[B, max_len]``, item_id + 1, 0 = padding, left-padded,
    most recent last (the last ``max_len`` items of each history, oldest first)."""
    batch = np.zeros((len(histories), int(max_len)), np.int64)
    for b, seq in enumerate(histories):
        seq = np.asarray(seq, np.int64)[-max_len:] if max_len > 0 else np.zeros(0, np.int64)
        if len(seq):
            batch[b, -len(seq):] = seq + 1
    return batch
