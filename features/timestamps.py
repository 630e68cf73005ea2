"""Source times to UTC: text with or without UTC offsets, the configured zone, plausibility bounds.

``parse_times`` converts each value with its own offset (``Z``, ``+01:00``; offsets may differ from row to
row) and treats values without one as local times of ``data.time.timezone``; ``time_bounds`` reads
``data.time.min``/``max`` (times outside are quarantined by ``features.cleaning`` as
``implausible_timestamp``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError


# An explicit UTC offset (or Z) after a clock time: 10:00+01:00, 10:00:00.5Z, 10:00 -0500.
_OFFSET = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def parse_times(text: pd.Series, fmt: str | None, tz: str) -> pd.Series:
    """Text times → UTC. Values with an explicit offset (``Z``, ``+01:00``; offsets may differ from row to
    row) are converted with their own offset; values without one are local times of ``data.time.timezone``.
    Unparseable values become NaT (quarantined by the caller)."""
    text = text.astype("str").str.strip()
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    if fmt and ("%z" in fmt or "%Z" in fmt):
        aware = np.ones(len(text), dtype=bool)
    elif fmt:
        aware = np.zeros(len(text), dtype=bool)
    else:
        aware = text.str.contains(_OFFSET, regex=True).to_numpy(bool)
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], format=fmt or "ISO8601", errors="coerce", utc=True).astype(out.dtype)
    if (~aware).any():
        local = pd.to_datetime(text[~aware], format=fmt or "ISO8601", errors="coerce")
        if getattr(local.dt, "tz", None) is None:
            local = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        out[~aware] = local.dt.tz_convert("UTC").astype(out.dtype)
    return out


def check_timezone(tz: str) -> None:
    try:
        pd.Timestamp("2000-01-01").tz_localize(tz)
    except Exception as e:  # noqa: BLE001 - unknown zone name
        raise DataConfigError(f"data.time.timezone={tz!r} is not a known time zone: {e}") from e


def time_bounds(t_cfg: Any) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``data.time.min`` / ``data.time.max`` as UTC timestamps (None = no bound)."""
    out = []
    for key in ("min", "max"):
        v = t_cfg.get(key) if t_cfg is not None else None
        if v is None:
            out.append(None)
            continue
        try:
            t = pd.Timestamp(str(v))
        except (ValueError, TypeError) as e:
            raise DataConfigError(f"data.time.{key}={v!r} is not a date or time (ISO 8601, e.g. 1990-01-01)") from e
        out.append(t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC"))
    if out[0] is not None and out[1] is not None and out[0] >= out[1]:
        raise DataConfigError(f"data.time.min={out[0]} is not before data.time.max={out[1]}")
    return out[0], out[1]
