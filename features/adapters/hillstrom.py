"""The Hillstrom MineThatData e-mail experiment (64,000 customers, 2008): typed and validated.

``load_hillstrom(path)`` is what campaign code calls: it returns the valid rows with typed columns
and raises ``DataConfigError`` naming the file and column when a column is missing. Each row gets
``customer_id`` (its 0-based row number: the file has no customer key) and ``treatment``
(``mens`` | ``womens`` | ``control``, from ``segment``). Invalid rows (a value outside its domain) are
returned by ``validate_hillstrom`` and land in quarantine when prepared with
``python -m features.prepare data=hillstrom``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError, RawData

COLUMNS = ("recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel",
           "segment", "visit", "conversion", "spend")
SEGMENTS = {"Mens E-Mail": "mens", "Womens E-Mail": "womens", "No E-Mail": "control"}
ZIP_CODES = ("Urban", "Surburban", "Rural")  # sic: the original spelling
CHANNELS = ("Phone", "Web", "Multichannel")
BINARY = ("mens", "womens", "newbie", "visit", "conversion")


def read_hillstrom(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataConfigError(f"Hillstrom file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataConfigError(f"cannot read Hillstrom file {path}: {e}") from e
    for col in COLUMNS:
        if col not in df.columns:
            raise DataConfigError(f"{path}: missing column {col!r}; it has {list(df.columns)}")
    return df[list(COLUMNS)]


def validate_hillstrom(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(typed valid rows, rejected rows with ``reason`` and ``message``) of a text Hillstrom frame."""
    num = {c: pd.to_numeric(raw[c], errors="coerce") for c in ("recency", "history", "spend", *BINARY)}
    checks = [
        ("recency", num["recency"].between(1, 12) & (num["recency"] == num["recency"].round()), "recency not an integer in 1..12"),
        ("history", num["history"] >= 0, "history not a non-negative number"),
        ("spend", num["spend"] >= 0, "spend not a non-negative number"),
        *[(c, num[c].isin([0, 1]), f"{c} not 0 or 1") for c in BINARY],
        ("zip_code", raw["zip_code"].isin(ZIP_CODES), f"zip_code not one of {ZIP_CODES}"),
        ("channel", raw["channel"].isin(CHANNELS), f"channel not one of {CHANNELS}"),
        ("segment", raw["segment"].isin(list(SEGMENTS)), f"segment not one of {list(SEGMENTS)}"),
        ("history_segment", raw["history_segment"].str.match(r"^\d\) \$"), "history_segment not like '1) $0 - $100'"),
    ]
    bad = np.zeros(len(raw), dtype=bool)
    msgs = np.full(len(raw), "", dtype=object)
    for col, ok, msg in checks:
        fail = ~ok.fillna(False).to_numpy(bool) & ~bad
        msgs[fail] = [f"{col}={v!r}: {msg}" for v in raw[col].to_numpy()[fail]]
        bad |= fail
    rejected = raw.loc[bad].assign(reason="invalid_value", message=msgs[bad])
    ok = ~bad
    out = pd.DataFrame({
        "customer_id": np.flatnonzero(ok).astype(np.int64),
        "recency": num["recency"][ok].astype(np.int64).to_numpy(),
        "history_segment": raw["history_segment"][ok].astype("str").to_numpy(),
        "history": num["history"][ok].astype(np.float64).to_numpy(),
        **{c: num[c][ok].astype(bool).to_numpy() for c in ("mens", "womens", "newbie")},
        "zip_code": raw["zip_code"][ok].astype("str").to_numpy(),
        "channel": raw["channel"][ok].astype("str").to_numpy(),
        "segment": raw["segment"][ok].astype("str").to_numpy(),
        "treatment": raw["segment"][ok].map(SEGMENTS).astype("str").to_numpy(),
        "visit": num["visit"][ok].astype(np.int8).to_numpy(),
        "conversion": num["conversion"][ok].astype(np.int8).to_numpy(),
        "spend": num["spend"][ok].astype(np.float64).to_numpy(),
    })
    return out, rejected


def load_hillstrom(path: str | Path) -> pd.DataFrame:
    """The valid Hillstrom rows, typed: customer_id int64, recency int64, history float64, mens/womens/
    newbie bool, zip_code/channel/segment/history_segment str, treatment str, visit/conversion int8,
    spend float64."""
    return validate_hillstrom(read_hillstrom(path))[0]


def load_hillstrom_raw(cfg: Any) -> RawData:
    """Adapter entry (``adapter: hillstrom``): the validated table plus quarantined rows."""
    path = Path(str(cfg.path))
    raw = read_hillstrom(path)
    valid, rejected = validate_hillstrom(raw)
    idx = rejected.index.to_numpy()
    q = pd.DataFrame({
        "src_file": path.name, "src_row": idx.astype(np.int64), "reason": rejected["reason"].to_numpy(),
        "message": [f"{path.name} row {i + 1}: {m}" for i, m in zip(idx, rejected["message"])],
        "raw": [",".join(map(str, r)) for r in rejected[list(COLUMNS)].itertuples(index=False)],
    })
    return RawData(frame=pd.DataFrame(), files=[path.name], n_input_rows=len(raw), rejected=q,
                   tables={"hillstrom": valid})
