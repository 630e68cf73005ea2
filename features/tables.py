"""Validated side tables (campaigns, coupons, demographics, experiments) next to or instead of events.

A data config lists them under ``tables``::

    tables:
      campaigns:
        path: .../campaigns.parquet          # parquet or csv
        required: [campaign_id, household_id] # a null here quarantines the row (reason missing_value)
        pseudonymise: {household_id: user_key} # customer ids are replaced by their keyed hash

They are written to ``<processed>/tables/<name>.parquet`` (rejected rows to
``tables/quarantine.parquet``) and read back with ``features.processed.load_table``. Datasets with
``kind: tables`` (Hillstrom) have only tables: no events, items, users or splits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError, empty_quarantine
from features.privacy import pseudo_key, pseudonymise


def read_any(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise DataConfigError(f"{what} file not found: {path}")
    if path.is_dir():
        raise DataConfigError(f"{what} path {path} is a directory, not a file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any reader error means an unreadable file
        raise DataConfigError(f"cannot read {what} file {path}: {e}") from e


def rows_to_quarantine(df: pd.DataFrame, mask: np.ndarray, src_file: str, reason: str, message: str,
                       private: tuple[str, ...] = ()) -> pd.DataFrame:
    """Quarantine rows for the rows of ``df`` where ``mask`` holds (``private`` columns pseudonymised)."""
    bad = df.loc[mask].copy()
    for c in private:
        if c in bad.columns:
            bad[c] = pseudonymise(bad[c].astype("object"))
    idx = np.flatnonzero(mask)
    raw = ["|".join(f"{c}={v}" for c, v in zip(bad.columns, row)) for row in bad.astype("object").itertuples(index=False)]
    return pd.DataFrame({"src_file": src_file, "src_row": idx.astype(np.int64), "reason": reason,
                         "message": [f"{src_file} row {i + 1}: {message}" for i in idx], "raw": raw})


def read_validated_table(name: str, spec: Any, key: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(valid rows, quarantined rows, n_input_rows) of one configured table."""
    path = Path(str(spec.path))
    df = read_any(path, f"table {name!r}")
    required = list(spec.get("required") or [])
    for col in required:
        if col not in df.columns:
            raise DataConfigError(f"{path}: missing column {col!r} (data.tables.{name}.required); it has {list(df.columns)}")
    for c in df.columns:  # R factors and large strings -> plain text
        if pd.api.types.is_string_dtype(df[c].dtype):
            df[c] = df[c].astype("str").str.strip()
    private = tuple(dict(spec.get("pseudonymise") or {}))
    bad = df[required].isna().any(axis=1).to_numpy() if required else np.zeros(len(df), dtype=bool)
    q = rows_to_quarantine(df, bad, path.name, "missing_value", f"a required field of {required} is missing", private)
    out = df.loc[~bad].reset_index(drop=True)
    for src, dst in dict(spec.get("pseudonymise") or {}).items():
        if src not in out.columns:
            raise DataConfigError(f"{path}: missing column {src!r} (data.tables.{name}.pseudonymise)")
        out.insert(list(out.columns).index(src), dst, pseudonymise(out[src].astype("object"), key))
        out = out.drop(columns=[src])
    return out, q, len(df)


def read_tables(cfg: Any) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict[str, dict]]:
    """Every table under ``cfg.tables``: (tables, quarantine, counts per table)."""
    tables, quarantine, counts = {}, [], {}
    key = pseudo_key()[0]
    for name, spec in sorted(dict(cfg.get("tables") or {}).items()):
        t, q, n = read_validated_table(name, spec, key)
        tables[name] = t
        if len(q):
            quarantine.append(q)
        counts[name] = {"n_input_rows": n, "n_rows": len(t), "n_quarantined": len(q)}
    q = pd.concat(quarantine, ignore_index=True) if quarantine else empty_quarantine()
    return tables, q, counts
