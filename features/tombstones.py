"""Tombstones: the pseudonymised keys of users who asked to be forgotten, kept out of every later artifact.

The folder ``${SHOPREC_ARTIFACTS:-artifacts}/privacy/tombstones/`` holds ``keys.txt`` (one 16-hex
``user_key`` per line, never a raw id) and a ``manifest.json`` (count, update time and the
pseudonymisation key's fingerprint: a tombstone made with another key would match nobody, so reading
them with another key is an error naming both fingerprints). ``features.prepare`` drops the events of a
tombstoned user at ingestion (counted in the manifest's ``n_dropped["forgotten"]``), and audience builds
leave them out.

Writes are atomic (temporary file + rename) under an exclusive ``flock`` of ``.lock``, so two forget jobs
at once lose no key.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from features.artifacts import read_json, write_json
from features.privacy import check_key_fingerprint, key_fingerprint, pseudonymise

KEYS_FILE = "keys.txt"
_HEX = frozenset("0123456789abcdef")


def tombstone_dir(artifacts: str | Path | None = None) -> Path:
    """``<artifacts>/privacy/tombstones`` (``artifacts`` defaults to ``$SHOPREC_ARTIFACTS`` or ``artifacts``)."""
    root = Path(artifacts) if artifacts is not None else Path(os.environ.get("SHOPREC_ARTIFACTS") or "artifacts")
    return root / "privacy" / "tombstones"


def _check_key(user_key: str) -> str:
    k = str(user_key).strip().lower()
    if len(k) != 16 or not set(k) <= _HEX:
        raise ValueError(f"user_key {user_key!r} is not a pseudonymised key (16 hex characters)")
    return k


@contextlib.contextmanager
def folder_lock(folder: Path, name: str = ".lock") -> Iterator[None]:
    """An exclusive ``flock`` on ``folder/name`` (between processes) while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_tombstones(folder: str | Path | None = None) -> frozenset[str]:
    """Every tombstoned key (empty when there are none); ``KeyMismatchError`` when they were written with
    another pseudonymisation key than this process's."""
    folder = Path(folder) if folder is not None else tombstone_dir()
    path = folder / KEYS_FILE
    if not path.exists():
        return frozenset()
    if (folder / "manifest.json").exists():
        check_key_fingerprint(read_json(folder / "manifest.json").get("pseudo_key_fingerprint"),
                              f"tombstones {folder}")
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def add_tombstone(user_key: str, folder: str | Path | None = None) -> bool:
    """Record ``user_key``; True when it is new, False when it was already there."""
    key = _check_key(user_key)
    folder = Path(folder) if folder is not None else tombstone_dir()
    with folder_lock(folder):
        keys = set(load_tombstones(folder))
        if key in keys:
            return False
        keys.add(key)
        tmp = folder / f".{KEYS_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text("".join(f"{k}\n" for k in sorted(keys)))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / KEYS_FILE)
        mtmp = folder / f".manifest.{uuid.uuid4().hex[:8]}.json"
        write_json(mtmp, {"kind": "tombstones", "n_keys": len(keys), "pseudo_key_fingerprint": key_fingerprint(),
                          "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        os.replace(mtmp, folder / "manifest.json")
    return True


def tombstoned_mask(user_keys: pd.Series, tombstones: Iterable[str]) -> pd.Series:
    """True where the (pseudonymised) key is tombstoned."""
    stones = set(tombstones)
    if not stones:
        return pd.Series(False, index=user_keys.index)
    return user_keys.astype("string").isin(stones).fillna(False).astype(bool)


def drop_tombstoned(df: pd.DataFrame, column: str = "user_key", folder: str | Path | None = None) -> tuple[pd.DataFrame, int]:
    """``df`` without the rows whose pseudonymised ``column`` is tombstoned (audiences, exports), and how many."""
    stones = load_tombstones(folder)
    if not stones or column not in df.columns or df.empty:
        return df, 0
    mask = tombstoned_mask(df[column], stones).to_numpy()
    n = int(mask.sum())
    return (df.loc[~mask].reset_index(drop=True) if n else df), n


def drop_tombstoned_raw(df: pd.DataFrame, column: str, *, pseudonymised: bool, key: bytes | None = None,
                        folder: str | Path | None = None) -> tuple[pd.DataFrame, int]:
    """``df`` without the rows whose ``column`` (a raw user id, or a pseudonymised key when
    ``pseudonymised``) belongs to a tombstoned user, and how many rows went. No tombstones: ``df`` itself."""
    stones = load_tombstones(folder)
    if not stones or column not in df.columns or df.empty:
        return df, 0
    raw = df[column]
    keys = raw.astype("string").str.strip().str.lower() if pseudonymised else pseudonymise(raw, key)
    mask = tombstoned_mask(keys, stones).to_numpy()
    n = int(mask.sum())
    return (df.loc[~mask] if n else df), n
