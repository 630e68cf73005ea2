"""Consent per channel: an input table, resolved for every profiled user.

The input (``profile.consent.path``, parquet or csv) has columns ``channel``, ``opted_in`` (bool or
0/1) and either ``user_key`` (already pseudonymised) or ``customer_id`` (a raw key, pseudonymised here
with ``features.privacy`` and never written). When no path is given a seeded synthetic table is drawn
with the configured opt-in rate per channel, and the manifest says so. Users the table does not
mention get ``default_opted_in``. Opted-out users keep their profile; they are only marked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.artifacts import file_sha256
from features.privacy import pseudonymise


@dataclass
class Consent:
    table: pd.DataFrame        # user_key, channel, opted_in (bool), source ("input" | "default" | "synthetic")
    source: str                # "synthetic" or "input"
    input_path: str | None
    input_sha256: str | None


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"profile.consent.path: file not found: {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"customer_id": "string", "user_key": "string", "channel": "string"})
    raise ValueError(f"profile.consent.path: expected a .parquet or .csv file, got {path}")


def _as_bool(col: pd.Series, path: Path) -> pd.Series:
    mapping = {True: True, False: False, 1: True, 0: False, "1": True, "0": False, "true": True, "false": False,
               "yes": True, "no": False}
    norm = col.map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    out = norm.map(mapping)
    bad = col[out.isna()]
    if len(bad):
        raise ValueError(f"{path}: column 'opted_in' has values that are not booleans, e.g. {bad.iloc[0]!r}")
    return out.astype(bool)


def load_input(path: Path, channels: list[str]) -> pd.DataFrame:
    """The input consent table, validated and keyed by ``user_key``; the last row per (user, channel) wins."""
    raw = _read(path)
    missing = [c for c in ("channel", "opted_in") if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: consent table lacks column(s) {missing}")
    if "user_key" in raw.columns:
        keys = raw["user_key"].astype("string")
    elif "customer_id" in raw.columns:
        keys = pseudonymise(raw["customer_id"])
    else:
        raise ValueError(f"{path}: consent table needs a 'user_key' or a 'customer_id' column")
    unknown = sorted(set(raw["channel"].dropna().astype(str)) - set(channels))
    if unknown:
        raise ValueError(f"{path}: column 'channel' has unknown channels {unknown}; expected {list(channels)}")
    table = pd.DataFrame({"user_key": keys, "channel": raw["channel"].astype("string"), "opted_in": _as_bool(raw["opted_in"], path)})
    return table.dropna(subset=["user_key", "channel"]).drop_duplicates(["user_key", "channel"], keep="last")


def synthetic(user_keys: pd.Series, rates: dict[str, float], seed: int) -> pd.DataFrame:
    """A seeded synthetic consent table: each user opts in to each channel with the channel's rate."""
    rng = np.random.default_rng(seed)
    parts = []
    for channel, rate in rates.items():
        if not 0 <= float(rate) <= 1:
            raise ValueError(f"profile.consent.synthetic_opt_in.{channel} must be in [0, 1], got {rate}")
        parts.append(pd.DataFrame({"user_key": user_keys.to_numpy(), "channel": channel,
                                   "opted_in": rng.random(len(user_keys)) < float(rate)}))
    return pd.concat(parts, ignore_index=True)


def resolve(user_keys: pd.Series, consent_cfg: dict[str, Any], seed: int) -> Consent:
    """Consent of every user in ``user_keys`` for every configured channel."""
    channels = list(consent_cfg["channels"])
    if consent_cfg["path"]:
        path = Path(consent_cfg["path"])
        given = load_input(path, channels).assign(source="input")
        source, sha = "input", file_sha256(path)
    else:
        rates = dict(consent_cfg["synthetic_opt_in"])
        missing = [c for c in channels if c not in rates]
        if missing:
            raise ValueError(f"profile.consent.synthetic_opt_in has no rate for channel(s) {missing}")
        given = synthetic(user_keys, {c: rates[c] for c in channels}, seed).assign(source="synthetic")
        path, source, sha = None, "synthetic", None
    grid = pd.MultiIndex.from_product([pd.Index(user_keys.astype("string").unique(), name="user_key"),
                                       pd.Index(channels, name="channel")]).to_frame(index=False)
    table = grid.merge(given, on=["user_key", "channel"], how="left")
    unmatched = table["opted_in"].isna()
    table.loc[unmatched, "opted_in"] = bool(consent_cfg["default_opted_in"])
    table.loc[unmatched, "source"] = "default"
    table["opted_in"] = table["opted_in"].astype(bool)
    table["user_key"] = table["user_key"].astype("string")
    table["channel"] = table["channel"].astype("string")
    table["source"] = table["source"].astype("string")
    return Consent(table, source, None if path is None else str(path), sha)


def opt_out_flags(consent: Consent, user_keys: pd.Series, channels: list[str]) -> pd.DataFrame:
    """``opted_out_<channel>`` bool columns aligned with ``user_keys``."""
    wide = consent.table.pivot(index="user_key", columns="channel", values="opted_in")
    out = pd.DataFrame(index=user_keys.index)
    for ch in channels:
        out[f"opted_out_{ch}"] = ~user_keys.map(wide[ch]).astype(bool).to_numpy()
    return out
