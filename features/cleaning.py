"""Cleaning rules: typing and normalisation, missing values, validity, de-duplication, bots, k-core.

Every rule is switched and tuned in the data config (``data.events``, ``data.time``,
``data.missing``, ``data.cleaning``: see ``conf/data_defaults.yaml``) and counted in the ledger:
bad rows go to quarantine with a reason code, rows removed by a rule are counted per rule.
Steps run in this order (each sees the survivors of the previous one):

1. ``normalise``: null tokens, event mapping (unknown codes → ``unknown_event``), returns by order
   prefix, timestamps to UTC (``bad_timestamp``; mixed UTC offsets converted row by row; times outside
   ``data.time.min``/``max`` → ``implausible_timestamp``), numbers (``bad_number``), price unit scale.
   A setting that no row of a file satisfies (no time parses, a column of the wrong type) fails with
   the file, column and a value named.
2. ``validate``: negative quantity that is not a return (``negative_quantity``), zero quantity,
   negative price; a return's quantity is stored positive. (Before the missing-value step, so a
   bad row is quarantined even when it also lacks a user.)
3. ``apply_missing``: per field ``quarantine`` | ``drop`` | ``fill`` | ``keep``.
4. ``filter_rows``: excluded item keys, cross-file overlap, exact duplicates, repeats within a
   window, quantity outliers, bots (events per user per minute), optional k-core.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import ROW_FIELDS, DataConfigError, RawData
from features.quarantine import Ledger
from features.schema import EVENT_TYPES
from features.timestamps import check_timezone, parse_times, time_bounds

MISSING_POLICIES = ("quarantine", "drop", "fill", "keep")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default)
    return default if value is None else value


def _is_text(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(s.dtype) or s.dtype == object


def as_categorical(s: pd.Series) -> pd.Series:
    return s if isinstance(s.dtype, pd.CategoricalDtype) else s.astype("category")


def per_value(s: pd.Series, fn: Any) -> pd.Series:
    """``fn`` (a vectorised function of a text Series) applied once per distinct value of ``s``."""
    s = as_categorical(s)
    res = pd.Series(fn(pd.Series(s.cat.categories, dtype=s.cat.categories.dtype)))
    arr = pd.api.extensions.take(res.array, s.cat.codes.to_numpy(), allow_fill=True)
    return pd.Series(arr, index=s.index)


def text_transform(s: pd.Series, fn: Any) -> pd.Series:
    """A Categorical whose values are ``fn`` of the old ones (merging values that become equal)."""
    s = as_categorical(s)
    res = pd.Series(fn(pd.Series(s.cat.categories)))
    new_codes, uniques = pd.factorize(res)
    codes = s.cat.codes.to_numpy()
    new_codes = np.r_[new_codes, -1]  # code -1 (null) stays null
    mapped = new_codes[np.where(codes >= 0, codes, len(new_codes) - 1)]
    return pd.Series(pd.Categorical.from_codes(mapped, categories=pd.Index(uniques)), index=s.index)


# ---------------------------------------------------------------- 1. normalisation
def normalise(raw: RawData, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    """Typed canonical columns; rows that cannot be typed go to quarantine."""
    df = raw.frame
    for col in df.columns:
        if col not in ROW_FIELDS and _is_text(df[col]):
            df[col] = as_categorical(df[col])
    null_values = dict(_get(cfg, "null_values", {}))
    for col, tokens in null_values.items():
        if col in df.columns and _is_text(df[col]):
            df[col] = text_transform(df[col], lambda c, t=list(tokens): c.where(~c.isin(t), None))
    for col in ("user", "item", "order_id", "session_id"):
        if col in df.columns and _is_text(df[col]):
            df[col] = text_transform(df[col], lambda c: c.str.strip().replace("", None))
    df = _normalise_events(df, cfg, ledger)
    df = _normalise_time(df, raw, cfg, ledger)
    df = _normalise_numbers(df, cfg, ledger)
    return df


def _normalise_events(df: pd.DataFrame, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    ev_cfg = _get(cfg, "events", {})
    default = _get(ev_cfg, "default", "purchase")
    if "event" in df.columns:
        mapping = {str(k).strip().lower(): str(v) for k, v in dict(_get(ev_cfg, "map", {})).items()}
        for v in mapping.values():
            if v not in EVENT_TYPES:
                raise DataConfigError(f"data.events.map maps to unknown event type {v!r}; known: {list(EVENT_TYPES)}")

        def to_type(c: pd.Series) -> pd.Series:
            low = c.astype("str").str.strip().str.lower()
            return low.map(mapping) if mapping else low.where(low.isin(EVENT_TYPES), None)

        mapped = text_transform(df["event"], to_type)
        bad = (mapped.isna() & df["event"].notna()).to_numpy()
        df = ledger.quarantine(df, bad, "unknown_event", "unknown event type", "event")
        df["event"] = mapped[~bad]
    else:
        if default not in EVENT_TYPES:
            raise DataConfigError(f"data.events.default={default!r} is not one of {list(EVENT_TYPES)}")
        df["event"] = pd.Categorical.from_codes(np.zeros(len(df), dtype=np.int8), categories=[default])
    prefix = _get(ev_cfg, "return_order_prefix")
    if prefix and "order_id" in df.columns:
        is_return = per_value(df["order_id"], lambda c: c.str.startswith(str(prefix))).fillna(False).to_numpy(bool)
        if is_return.any():
            ev = df["event"] if "return" in df["event"].cat.categories else df["event"].cat.add_categories(["return"])
            codes = ev.cat.codes.to_numpy().copy()
            codes[is_return] = list(ev.cat.categories).index("return")
            df["event"] = pd.Categorical.from_codes(codes, categories=ev.cat.categories)
    return df


def _normalise_time(df: pd.DataFrame, raw: RawData, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    t_cfg = _get(cfg, "time", {})
    if raw.time_kind == "order":
        # No time in the source: the position in the input is the order (1 s per row from the epoch).
        df["ts"] = pd.Series(df["src_row"].to_numpy(np.int64) * 1_000_000, index=df.index).astype("datetime64[us]").dt.tz_localize("UTC")
        return df
    raw_ts = df["ts"]
    unit = _get(t_cfg, "unit")
    fmt = _get(t_cfg, "format")
    tz = str(_get(t_cfg, "timezone", "UTC"))
    check_timezone(tz)
    if unit:
        if _is_text(raw_ts):
            num = per_value(raw_ts, lambda c: pd.to_numeric(c, errors="coerce"))
        elif pd.api.types.is_numeric_dtype(raw_ts.dtype):
            num = raw_ts
        else:
            _fail_ts(df, raw, f"holds {raw_ts.dtype} values, not unix times (data.time.unit={unit})")
        ts = pd.to_datetime(num.astype("float64"), unit=str(unit), errors="coerce", utc=True)  # unix times are UTC
    elif pd.api.types.is_datetime64_any_dtype(raw_ts.dtype):
        ts = raw_ts
    elif _is_text(raw_ts):
        ts = per_value(raw_ts, lambda c: parse_times(c, fmt, tz))
    else:
        _fail_ts(df, raw, f"holds {raw_ts.dtype} values, not times; set data.time.unit (s, ms, us) for unix times")
    if getattr(ts.dt, "tz", None) is None:
        ts = ts.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    ts = ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    bad = (ts.isna() & raw_ts.notna()).to_numpy()
    _fail_if_no_time_parses(df, raw, bad, fmt, unit)
    df = ledger.quarantine(df, bad, "bad_timestamp", "unparseable or non-existent local time", "ts")
    ts = ts[~bad]
    lo, hi = time_bounds(t_cfg)
    out = ((ts < lo) | (ts > hi)).to_numpy() if lo is not None or hi is not None else np.zeros(len(ts), bool)
    if out.any():
        df = ledger.quarantine(df, out, "implausible_timestamp",
                               f"time outside data.time.min..max ({lo or '-'} .. {hi or '-'})", "ts")
        ts = ts[~out]
    df["ts"] = ts
    return df


def _fail_ts(df: pd.DataFrame, raw: RawData, what: str) -> None:
    i = int(df["src_file"].iloc[0]) if len(df) else 0
    value = df["ts"].dropna().iloc[0] if df["ts"].notna().any() else None
    raise DataConfigError(f"{raw.where(i, 'ts')} (data.columns.ts) {what}; e.g. {str(value)!r}")


def _fail_if_no_time_parses(df: pd.DataFrame, raw: RawData, bad: np.ndarray, fmt: Any, unit: Any) -> None:
    """A file in which no time parses is a config problem (format, unit, column), not bad rows: fail."""
    files = df["src_file"].to_numpy()
    notna = df["ts"].notna().to_numpy()
    for i in np.unique(files[bad]):
        mine = files == i
        if not (notna[mine] & ~bad[mine]).any():
            value = df["ts"].to_numpy()[mine & bad][0]
            setting = f"data.time.unit={unit}" if unit else f"data.time.format={fmt or 'ISO 8601'}"
            raise DataConfigError(f"{raw.where(int(i), 'ts')}: no value parses as a time ({setting}), "
                                  f"e.g. {str(value)!r}")


def _normalise_numbers(df: pd.DataFrame, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    scale = float(_get(_get(cfg, "units", {}), "price_scale", 1.0))
    for col in ("price", "quantity", "rating", "total"):
        if col not in df.columns:
            continue
        raw = df[col]
        if _is_text(raw):
            num = per_value(raw, lambda c: pd.to_numeric(c, errors="coerce")).astype("float64")
        else:
            num = raw.astype("float64")
        bad = num.isna() & raw.notna()
        if col == "quantity":
            bad |= num.notna() & (num != np.round(num))
        bad = bad.to_numpy()
        df = ledger.quarantine(df, bad, "bad_number", f"{col} is not a valid number", col)
        num = num[~bad]
        df[col] = num * scale if col in ("price", "total") and scale != 1.0 else num
    if "total" in df.columns and "price" not in df.columns and "quantity" in df.columns:
        # A line total and a quantity: the unit price is their ratio (null for a zero quantity).
        q = df["quantity"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            df["price"] = np.where(q != 0, df["total"].to_numpy() / q, np.nan)
    return df


# ---------------------------------------------------------------- 3. missing values
def apply_missing(df: pd.DataFrame, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    """Per field: quarantine the row, drop it (counted as ``missing_<field>``), fill a value, or keep null."""
    policies = dict(_get(cfg, "missing", {}))
    for col in ("user", "item", "ts"):
        policies.setdefault(col, "quarantine")  # an event needs these three
    for col, spec in policies.items():
        policy, value = (spec, None) if isinstance(spec, str) else (spec.get("policy"), spec.get("value"))
        if policy not in MISSING_POLICIES:
            raise DataConfigError(f"data.missing.{col}={policy!r} is not one of {list(MISSING_POLICIES)}")
        if col not in df.columns:
            continue
        if col in ("user", "item", "ts") and policy in ("keep", "fill"):
            raise DataConfigError(f"data.missing.{col}={policy!r}: an event needs a {col}; use quarantine or drop")
        miss = df[col].isna()
        if not miss.any():
            continue
        if policy == "quarantine":
            df = ledger.quarantine(df, miss, "missing_value", f"{col} is missing")
        elif policy == "drop":
            df = ledger.drop(df, miss, f"missing_{col}")
        elif policy == "fill":
            df[col] = df[col].fillna(value)
    return df


# ---------------------------------------------------------------- 2. validity
def validate(df: pd.DataFrame, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    rules = _get(cfg, "validity", {})
    if "quantity" in df.columns:
        q = df["quantity"].to_numpy()
        is_return = (df["event"] == "return").to_numpy()
        df = ledger.quarantine(df, (q < 0) & ~is_return, "negative_quantity",
                               "negative quantity on an event that is not a return", "quantity")
        if _get(rules, "zero_quantity", "quarantine") == "quarantine":
            df = ledger.quarantine(df, (df["quantity"] == 0).to_numpy(), "zero_quantity", "quantity is zero", "quantity")
        # Returns carry the returned quantity as a positive number.
        df["quantity"] = df["quantity"].abs()
    if "price" in df.columns:
        df = ledger.quarantine(df, (df["price"] < 0).to_numpy(), "negative_price", "negative price", "price")
    return df


# ---------------------------------------------------------------- 4. filters
def filter_rows(df: pd.DataFrame, cfg: Any, ledger: Ledger, time_kind: str) -> pd.DataFrame:
    c = _get(cfg, "cleaning", {})
    excluded = list(_get(c, "exclude_items", []))
    if excluded:
        df = ledger.drop(df, df["item"].isin([str(x) for x in excluded]).to_numpy(), "excluded_item")
    overlap_key = list(_get(c, "overlap_key", []))
    if overlap_key:
        df = ledger.drop(df, overlap_duplicates(df, overlap_key), "overlap_duplicate")
    if _get(c, "exact_duplicates", True):
        df = ledger.drop(df, exact_duplicates(df), "exact_duplicate")
    window = _get(c, "repeat_window_s")
    if window and time_kind == "time":
        df = ledger.drop(df, repeats_within(df, float(window), list(_get(c, "repeat_events", []))), "repeat_in_window")
    max_q = _get(c, "max_quantity")
    if max_q and "quantity" in df.columns:
        df = ledger.drop(df, (df["quantity"] > float(max_q)).to_numpy(), "outlier_quantity")
    max_pm = _get(c, "max_events_per_minute")
    if max_pm and time_kind == "time":
        df = ledger.drop(df, bot_rows(df, int(max_pm), str(_get(c, "bot_unit", "events"))), "bot_user")
    k_user, k_item = int(_get(c, "kcore_users", 0)), int(_get(c, "kcore_items", 0))
    if k_user > 1 or k_item > 1:
        df = ledger.drop(df, kcore_rows(df, k_user, k_item), "kcore")
    return df


def exact_duplicates(df: pd.DataFrame) -> np.ndarray:
    """Rows identical to an earlier row in every source field (bookkeeping columns aside).

    Only rows that share (user, item, ts) with another row can be duplicates: a 64-bit hash of those
    three finds the candidates in one pass (collisions only add candidates), and the exact
    comparison runs on the candidates alone, which keeps this fast on 10M-row clickstreams.
    """
    out = np.zeros(len(df), dtype=bool)
    if len(df) < 2:
        return out
    h = _hash_columns(df, ["user", "item"])
    h ^= df["ts"].astype("datetime64[us, UTC]").astype(np.int64).to_numpy().view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    cand = np.flatnonzero(pd.Series(h).duplicated(keep=False).to_numpy())
    if len(cand) == 0:
        return out
    cols = [x for x in df.columns if x not in ROW_FIELDS]
    out[cand] = df.iloc[cand].duplicated(cols, keep="first").to_numpy()
    return out


def _hash_columns(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """A uint64 per row mixing the factorized codes of ``cols`` (equal rows give equal hashes)."""
    h = np.zeros(len(df), dtype=np.uint64)
    for i, c in enumerate(cols):
        codes = _group_codes(df, [c]).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = (h * np.uint64(0x100000001B3)) ^ (codes + np.uint64(i + 1)) * np.uint64(0xBF58476D1CE4E5B9)
    return h


def overlap_duplicates(df: pd.DataFrame, key: list[str]) -> np.ndarray:
    """Rows of a later file whose (key, occurrence) already appears in an earlier file.

    The occurrence number (0, 1, ... within file and key) keeps genuine repeated lines of one file.
    """
    missing = [k for k in key if k not in df.columns]
    if missing:
        raise DataConfigError(f"data.cleaning.overlap_key names {missing[0]!r}, which the data does not have")
    out = np.zeros(len(df), dtype=bool)
    files = df["src_file"].to_numpy()
    if len(np.unique(files)) < 2:
        return out
    # Candidates: rows whose first key field occurs in more than one file (cheap test on one column).
    first = _group_codes(df, key[:1])
    n_files = pd.Series(files).groupby(first).transform("nunique").to_numpy()
    cand = np.flatnonzero(n_files > 1)
    if len(cand) == 0:
        return out
    out[cand] = _overlap_in(df.iloc[cand], key)
    return out


def _overlap_in(df: pd.DataFrame, key: list[str]) -> np.ndarray:
    codes = _group_codes(df, key)
    occ = pd.Series(codes).groupby([df["src_file"].to_numpy(), codes]).cumcount().to_numpy()
    k2 = _group_codes(pd.DataFrame({"c": codes, "o": occ}), ["c", "o"])
    first_file = pd.Series(df["src_file"].to_numpy()).groupby(k2).transform("min").to_numpy()
    return df["src_file"].to_numpy() != first_file


def repeats_within(df: pd.DataFrame, window_s: float, events: list[str]) -> np.ndarray:
    """Same (user, item, event) again within ``window_s`` seconds of the previous kept one's time."""
    ts = df["ts"].astype("datetime64[us, UTC]").astype(np.int64).to_numpy()
    codes = _group_codes(df, ["user", "item", "event"])
    order = np.lexsort((df["src_row"].to_numpy(), ts, codes))
    sc, st = codes[order], ts[order]
    same = np.r_[False, sc[1:] == sc[:-1]]
    gap = np.r_[np.inf, np.diff(st).astype(float)] / 1e6
    rep = same & (gap <= window_s)
    if events:
        rep &= df["event"].isin(events).to_numpy()[order]
    out = np.zeros(len(df), dtype=bool)
    out[order] = rep
    return out


def bot_rows(df: pd.DataFrame, max_per_minute: int, unit: str) -> np.ndarray:
    """All rows of users who exceed ``max_per_minute`` events (or distinct orders) in any minute."""
    if unit not in ("events", "orders"):
        raise DataConfigError(f"data.cleaning.bot_unit={unit!r} is not one of ['events', 'orders']")
    minute = df["ts"].astype("datetime64[us, UTC]").astype(np.int64).to_numpy() // 60_000_000
    minute = minute - minute.min()
    users = _group_codes(df, ["user"])
    span = int(minute.max()) + 1
    key_codes, keys = pd.factorize(users * span + minute)  # one code per (user, minute); hashing, no sort
    if unit == "orders" and "order_id" in df.columns:
        orders = _group_codes(df, ["order_id"])
        pair = key_codes.astype(np.int64) * (int(orders.max()) + 2) + orders
        first = ~pd.Series(pair).duplicated().to_numpy()  # one row per distinct (user, minute, order)
        counts = np.bincount(key_codes[first], minlength=len(keys))
    else:
        counts = np.bincount(key_codes, minlength=len(keys))
    bad_users = np.unique(np.asarray(keys)[counts > max_per_minute] // span)
    return np.isin(users, bad_users)


def kcore_rows(df: pd.DataFrame, k_user: int, k_item: int) -> np.ndarray:
    """Rows outside the k-core: repeatedly remove users with < k_user and items with < k_item events."""
    u = _group_codes(df, ["user"])
    i = _group_codes(df, ["item"])
    alive = np.ones(len(df), dtype=bool)
    while True:
        uc = np.bincount(u[alive], minlength=u.max() + 1 if len(u) else 0)
        ic = np.bincount(i[alive], minlength=i.max() + 1 if len(i) else 0)
        bad = alive & ((uc[u] < k_user) | (ic[i] < k_item))
        if not bad.any():
            return ~alive
        alive &= ~bad


def _group_codes(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """One int64 code per distinct combination of ``cols`` (nulls are a value of their own)."""
    if len(cols) == 1:
        return pd.factorize(df[cols[0]], use_na_sentinel=False)[0].astype(np.int64)
    return df.groupby(cols, sort=False, dropna=False).ngroup().to_numpy(np.int64)


def clean(raw: RawData, cfg: Any, ledger: Ledger) -> pd.DataFrame:
    """Run every cleaning step in order; return the surviving typed rows."""
    ledger.add_rejected(raw.rejected)
    df = normalise(raw, cfg, ledger)
    df = validate(df, cfg, ledger)
    df = apply_missing(df, cfg, ledger)
    df = filter_rows(df, cfg, ledger, raw.time_kind)
    return df
