"""Pseudonymisation of personal keys: a keyed hash (HMAC-SHA256) whose key never leaves the environment.

Ingestion and serving call the same function, so a raw storefront user id can be mapped to the stored
``user_key`` without any clear-text id being written anywhere.

The key comes from ``SHOPREC_PSEUDO_KEY``. When it is not set, a random local key is generated once
and kept in ``${SHOPREC_ARTIFACTS:-artifacts}/secrets/pseudonymisation.key`` (mode 0600, a warning
names the file): the source holds no usable default key. Every manifest of an artifact that holds
pseudonyms records the key's fingerprint (``pseudo_key_fingerprint``, a hash that does not reveal the
key); a job that reads such an artifact calls ``check_key_fingerprint``, and a different key is an error
naming both fingerprints instead of every known user silently looking new.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path

import pandas as pd

KEY_ENV = "SHOPREC_PSEUDO_KEY"
ARTIFACTS_ENV = "SHOPREC_ARTIFACTS"
LOCAL_KEY_FILE = Path("secrets") / "pseudonymisation.key"  # under ${SHOPREC_ARTIFACTS:-artifacts}
log = logging.getLogger(__name__)
_announced: set[str] = set()


class KeyMismatchError(ValueError):
    """An artifact was pseudonymised with another key than the one this process uses."""


def local_key_path() -> Path:
    """Where the generated local key lives when ``SHOPREC_PSEUDO_KEY`` is not set."""
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts") / LOCAL_KEY_FILE


def pseudo_key() -> tuple[bytes, str]:
    """The hashing key and where it came from (``env`` or ``local:<path>``). The key is never logged."""
    value = os.environ.get(KEY_ENV)
    if value:
        return value.encode(), "env"
    path = local_key_path()
    key = _read_or_create_local_key(path)
    if str(path) not in _announced:
        _announced.add(str(path))
        log.warning("%s is not set: using the local pseudonymisation key in %s (fingerprint %s). Every job and "
                    "service replica must use the same key: set %s to one secret value in production.",
                    KEY_ENV, path, key_fingerprint(key), KEY_ENV)
    return key, f"local:{path}"


def _read_or_create_local_key(path: Path) -> bytes:
    if path.exists():
        key = path.read_text().strip()
        if not key:
            raise KeyMismatchError(f"{path} is empty: delete it to generate a new local key, or set {KEY_ENV}")
        return key.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # atomic and exclusive: two processes starting at once agree on one key
        log.warning("generated a new local pseudonymisation key in %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip().encode()


def key_fingerprint(key: bytes | None = None) -> str:
    """A short public fingerprint of the key (16 hex characters): equal keys, equal fingerprints."""
    key = key if key is not None else pseudo_key()[0]
    return hashlib.sha256(b"shoprec-key-id:" + key).hexdigest()[:16]


def check_key_fingerprint(recorded: str | None, where: str, key: bytes | None = None) -> None:
    """Fail when the artifact described by ``where`` was pseudonymised with another key than this process's.

    ``recorded`` is the artifact manifest's ``pseudo_key_fingerprint``; an artifact written before fingerprints
    were recorded (None) is accepted with a warning.
    """
    source = "given key"
    if key is None:
        key, source = pseudo_key()
    current = key_fingerprint(key)
    if recorded is None:
        log.warning("%s records no pseudonymisation key fingerprint (written before fingerprints were kept): "
                    "cannot check that it was made with this key (fingerprint %s)", where, current)
        return
    if str(recorded) != current:
        raise KeyMismatchError(
            f"{where} was pseudonymised with the key of fingerprint {recorded}, but this process uses the key of "
            f"fingerprint {current} ({source}): every known user would look new. Use the same {KEY_ENV} for "
            f"every job and service, or prepare the data again with this key.")


def check_artifact_key(path: str | Path, what: str) -> None:
    """``check_key_fingerprint`` for the artifact whose ``manifest.json`` sits next to ``path`` (a file) or in it
    (a folder); an artifact without a manifest is not checked."""
    p = Path(path)
    manifest = (p if p.is_dir() else p.parent) / "manifest.json"
    if manifest.is_file():
        import json

        check_key_fingerprint(json.loads(manifest.read_text()).get("pseudo_key_fingerprint"), f"{what} {manifest.parent}")


def pseudonymise_one(raw: object, key: bytes | None = None) -> str:
    """Pseudonymise one raw key (any value; its ``str`` is hashed). 16 hex characters."""
    key = key if key is not None else pseudo_key()[0]
    return hmac.new(key, canonical(raw).encode(), hashlib.sha256).hexdigest()[:16]


def pseudonymise(raw: pd.Series, key: bytes | None = None) -> pd.Series:
    """Pseudonymise a column of raw keys; nulls stay null. Hashes each distinct value once."""
    key = key if key is not None else pseudo_key()[0]
    uniq = pd.unique(raw.dropna())
    base = hmac.new(key, digestmod=hashlib.sha256)  # copying a keyed state is ~3x faster than hmac.new
    mapping = {}
    for u in uniq:
        h = base.copy()
        h.update(canonical(u).encode())
        mapping[u] = h.hexdigest()[:16]
    return raw.map(mapping).astype("string")


def canonical(raw: object) -> str:
    """The text that is hashed: 12346.0 (a float-typed customer id) and "12346" must hash the same."""
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()
