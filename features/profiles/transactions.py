"""Raw transaction logs read directly for validating the CLV model (``scripts/bench_clv.py``, tests).

Both return ``user_id`` (int64), ``ts`` (UTC), ``value`` (revenue of the transaction line). Customer
ids are only turned into dense integers here; nothing is written.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_cdnow(path: str | Path) -> pd.DataFrame:
    """CDNOW master (Fader & Hardie): ``customer_id date number_of_cds dollar_value``, whitespace-separated."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CDNOW file not found: {path}")
    df = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    missing = {"customer_id", "date", "dollar_value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    return pd.DataFrame({"user_id": df["customer_id"].astype("int64"),
                         "ts": pd.to_datetime(df["date"], format="%Y%m%d", utc=True),
                         "value": df["dollar_value"].astype("float64")})


def read_online_retail(path: str | Path) -> pd.DataFrame:
    """UCI Online Retail (2010-12 → 2011-12) invoice lines: purchases of known customers only (no
    cancellations ``C…``, quantity > 0, unit price > 0); value = quantity × unit price."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Online Retail file not found: {path}")
    df = pd.read_parquet(path, columns=["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"])
    keep = (df["CustomerID"].notna() & ~df["InvoiceNo"].astype(str).str.startswith("C")
            & (df["Quantity"] > 0) & (df["UnitPrice"] > 0))
    df = df[keep]
    ts = pd.to_datetime(df["InvoiceDate"])
    ts = ts.dt.tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return pd.DataFrame({"user_id": df["CustomerID"].astype("int64").to_numpy(), "ts": ts.to_numpy(),
                         "value": (df["Quantity"] * df["UnitPrice"]).astype("float64").to_numpy()}).dropna(subset=["ts"])
