"""Pseudonymisation of personal keys: a keyed hash (HMAC-SHA256) whose key never leaves the environment.

Ingestion and serving call the same function, so a raw storefront user id can be mapped to the stored
``user_key`` without any clear-text id being written anywhere.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os

import pandas as pd

KEY_ENV = "SHOPREC_PSEUDO_KEY"
_DEV_KEY = "shoprec-development-key-do-not-use-in-production"
log = logging.getLogger(__name__)


def pseudo_key() -> tuple[bytes, str]:
    """The hashing key and where it came from (``env`` or ``default-dev``). The key is never logged."""
    value = os.environ.get(KEY_ENV)
    if value:
        return value.encode(), "env"
    log.warning("%s is not set: using the development key (fine for demos, not for production)", KEY_ENV)
    return _DEV_KEY.encode(), "default-dev"


def pseudonymise_one(raw: object, key: bytes | None = None) -> str:
    """Pseudonymise one raw key (any value; its ``str`` is hashed). 16 hex characters."""
    key = key if key is not None else pseudo_key()[0]
    return hmac.new(key, _canonical(raw).encode(), hashlib.sha256).hexdigest()[:16]


def pseudonymise(raw: pd.Series, key: bytes | None = None) -> pd.Series:
    """Pseudonymise a column of raw keys; nulls stay null. Hashes each distinct value once."""
    key = key if key is not None else pseudo_key()[0]
    uniq = pd.unique(raw.dropna())
    base = hmac.new(key, digestmod=hashlib.sha256)  # copying a keyed state is ~3x faster than hmac.new
    mapping = {}
    for u in uniq:
        h = base.copy()
        h.update(_canonical(u).encode())
        mapping[u] = h.hexdigest()[:16]
    return raw.map(mapping).astype("string")


def _canonical(raw: object) -> str:
    # 12346.0 (a float-typed customer id) and "12346" must hash the same.
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()
