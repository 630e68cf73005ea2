"""Read a prepared dataset (``artifacts/processed/<name>/``, written by ``python -m features.prepare``).

Every later stage reads processed data through these functions, never by globbing files itself::

    from features.processed import processed_dir, load_events, load_split
    d = processed_dir(cfg)                       # ${paths.processed}/${data.name}
    train = load_split(d, "loo", "train")        # same columns as events.parquet

The layout and the meaning of each column are documented in ``features.schema``. Readers of tables
that hold pseudonyms (``load_users``, ``load_table``) check that this process uses the pseudonymisation
key the data was prepared with (``features.privacy.check_key_fingerprint``): another key is an error
naming both fingerprints, not a silent "every user is new".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from features.artifacts import read_json
from features.privacy import check_key_fingerprint
from features.schema import SPLIT_KINDS, SPLIT_NAMES


class ProcessedDataError(ValueError):
    """A prepared dataset is missing or incomplete; the message names the folder or file."""


def processed_dir(cfg: Any) -> Path:
    """The processed folder of the configured dataset: ``${paths.processed}/${data.name}``."""
    return Path(str(cfg.paths.processed)) / str(cfg.data.name)


def _file(processed: str | Path, rel: str) -> Path:
    path = Path(processed) / rel
    if not path.exists():
        raise ProcessedDataError(
            f"{path} not found: prepare the data first (python -m features.prepare data=<name>)"
        )
    return path


def load_manifest(processed: str | Path) -> dict:
    """The dataset's ``manifest.json`` (counts, config, hashes, ``time_kind``, split counts)."""
    return read_json(_file(processed, "manifest.json"))


def load_events(processed: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All cleaned events, sorted by (user_id, ts, src_row)."""
    return pd.read_parquet(_file(processed, "events.parquet"), columns=columns)


def load_items(processed: str | Path) -> pd.DataFrame:
    """One row per dense item id: item_id, item_key, category, attributes, price stats, n_events."""
    return pd.read_parquet(_file(processed, "items.parquet"))


def load_users(processed: str | Path) -> pd.DataFrame:
    """One row per dense user id: user_id, user_key (pseudonymised), source attributes."""
    path = _file(processed, "users.parquet")
    check_same_key(processed)
    return pd.read_parquet(path)


def load_quarantine(processed: str | Path) -> pd.DataFrame:
    """Every rejected input row with its source file, row number, reason code and message."""
    return pd.read_parquet(_file(processed, "quarantine.parquet"))


def load_table(processed: str | Path, name: str) -> pd.DataFrame:
    """An extra validated table of a dataset (e.g. ``campaigns`` of completejourney): ``tables/<name>.parquet``."""
    path = _file(processed, f"tables/{name}.parquet")
    check_same_key(processed)
    return pd.read_parquet(path)


def check_same_key(processed: str | Path) -> None:
    """``features.privacy.KeyMismatchError`` when the dataset was pseudonymised with another key than this
    process's (``pseudo_key_fingerprint`` of its manifest; a folder without a manifest is not checked)."""
    if (Path(processed) / "manifest.json").exists():
        check_key_fingerprint(load_manifest(processed).get("pseudo_key_fingerprint"), f"prepared dataset {Path(processed)}")


def load_split(processed: str | Path, kind: str, part: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One part of a split: ``kind`` is ``loo`` or ``temporal``, ``part`` is train, valid or test."""
    if kind not in SPLIT_KINDS:
        raise ProcessedDataError(f"split kind {kind!r} is not one of {SPLIT_KINDS}")
    if part not in SPLIT_NAMES:
        raise ProcessedDataError(f"split part {part!r} is not one of {SPLIT_NAMES}")
    path = Path(processed) / "splits" / kind / f"{part}.parquet"
    if not path.exists() and (Path(processed) / "manifest.json").exists():
        available = load_manifest(processed).get("splits", {})
        if kind not in available:
            raise ProcessedDataError(
                f"{Path(processed)} has no {kind!r} split (available: {sorted(available)}); "
                "datasets without real time (time_kind 'order') have only 'loo'"
            )
    return pd.read_parquet(_file(processed, f"splits/{kind}/{part}.parquet"), columns=columns)
