"""Dense ids and the events, items and users tables built from the cleaned rows (used by ``features.prepare``).

``user_id`` is numbered in the order of the pseudonymised ``user_key``: a dense id says nothing about
the raw customer id. ``item_id`` follows the natural order of the item keys (numeric when every key is
a number). Raw user keys exist only in memory here: only pseudonyms are returned for writing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from features.adapters.base import DataConfigError, RawData
from features.privacy import canonical, pseudonymise
from features.schema import EVENT_SCHEMA, ITEM_SCHEMA


def dense_ids(keys: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Dense ids 0..n-1 in the natural order of the keys (numeric when every key is a number): items."""
    codes, uniq = pd.factorize(keys, sort=False)
    uniq = pd.Index(uniq)
    try:
        order_key = pd.to_numeric(pd.Series(uniq), errors="raise").to_numpy(dtype=float)
    except (ValueError, TypeError):
        order_key = None
    if order_key is not None:
        order = np.lexsort((np.asarray(uniq.astype(str)), order_key))
    else:
        order = np.argsort(np.asarray(uniq.astype(str)), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank[codes], uniq[order]


def user_ids(users: pd.Series, key: bytes, already_pseudonymised: bool = False) -> tuple[np.ndarray, pd.Series, pd.Series]:
    """Dense user ids numbered in the order of the pseudonymised ``user_key``, never of the raw ids (a rank
    must not reveal who a user is).

    Returns (user_id per row, ``user_key`` by dense id, raw key text by dense id: for joining side tables
    in memory, never written). ``already_pseudonymised``: the source keys are pseudonyms already (the
    service's event log) and are kept as they are, not hashed again.
    """
    codes, uniq = pd.factorize(users, sort=False)
    text = key_text(pd.Index(uniq))
    if already_pseudonymised:
        check_pseudonyms(text)
        pseudo = text.astype("string")
    else:
        pseudo = pseudonymise(text, key)
    order = np.argsort(pseudo.to_numpy(dtype=object).astype(str), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return (rank[codes], pseudo.iloc[order].reset_index(drop=True),
            text.iloc[order].reset_index(drop=True))


def key_text(uniq: pd.Index) -> pd.Series:
    """Canonical text of raw keys (12346.0 → "12346"), computed once per distinct key."""
    if pd.api.types.is_float_dtype(uniq.dtype):
        arr = uniq.to_numpy()
        if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return pd.Series(arr.astype(np.int64).astype(str), dtype="str")
    if pd.api.types.is_integer_dtype(uniq.dtype):
        return pd.Series(uniq.to_numpy().astype(str), dtype="str")
    return pd.Series([canonical(u) for u in uniq], dtype="str")


def build_events(df: pd.DataFrame, user_id: np.ndarray) -> tuple[pa.Table, pd.DataFrame, np.ndarray, pd.Index]:
    """Dense item ids and the events sorted by (user_id, ts, src_row); ``user_id`` from ``user_ids``.

    Returns (events as an Arrow table of ``EVENT_SCHEMA``, a light pandas view of it with the columns
    later steps need, the row order applied to ``df``, item keys by dense id).
    """
    item_id, items = dense_ids(df["item"])
    src_row = df["src_row"].to_numpy(np.int64)
    order = np.lexsort((src_row, ts_micros(df["ts"]), user_id))
    take = pa.array(order)
    arrays = []
    for f in EVENT_SCHEMA:
        if f.name == "user_id":
            arr = pa.array(user_id[order])
        elif f.name == "item_id":
            arr = pa.array(item_id[order])
        elif f.name == "src_row":
            arr = pa.array(src_row[order])
        elif f.name not in df.columns:
            arr = pa.nulls(len(df), f.type)
        else:
            col = df[f.name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                arr = pa.array(col.array).take(take).cast(f.type)
            else:
                arr = pa.array(col.array, from_pandas=True).take(take).cast(f.type)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    light = pd.DataFrame({
        "user_id": user_id[order], "item_id": item_id[order],
        "event": pd.Categorical(df["event"].array).take(order) if not isinstance(df["event"].dtype, pd.CategoricalDtype)
        else df["event"].array.take(order),
        "ts": df["ts"].array.take(order),
        "price": df["price"].to_numpy(np.float64)[order] if "price" in df.columns else np.full(len(df), np.nan),
    })
    return table, light, order, items


def ts_micros(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of a UTC timestamp column."""
    return ts.astype("datetime64[us, UTC]").astype(np.int64).to_numpy()


def _mode_per_id(ids: np.ndarray, values: pd.Series) -> pd.Series:
    """The most frequent non-null value per id (ties: the first in sorted order), indexed by id."""
    codes, uniques = pd.factorize(values, sort=True)
    ok = codes >= 0
    if not ok.any():
        return pd.Series(dtype="object")
    ids, codes = ids[ok].astype(np.int64), codes[ok].astype(np.int64)
    pair = ids * (len(uniques) + 1) + codes
    pair_codes, upair = pd.factorize(pair)  # hashing, no sort of all rows
    counts = np.bincount(pair_codes, minlength=len(upair))
    upair = np.asarray(upair)
    pid, pcode = upair // (len(uniques) + 1), upair % (len(uniques) + 1)
    order = np.lexsort((pcode, -counts, pid))  # per id: highest count, then smallest value
    first = np.r_[True, pid[order][1:] != pid[order][:-1]]
    sel = order[first]
    return pd.Series(np.asarray(uniques)[pcode[sel]], index=pid[sel])


def build_items(events: pd.DataFrame, df_sorted_attrs: dict[str, pd.Series], items: pd.Index,
                side: pd.DataFrame | None) -> pd.DataFrame:
    n = len(items)
    keys = key_text(items)
    out = pd.DataFrame({"item_id": np.arange(n, dtype=np.int64), "item_key": keys})
    priced = events[(events["event"] != "return") & events["price"].notna()]
    g = priced.groupby("item_id")["price"]
    out["price_mean"] = g.mean().reindex(out["item_id"]).to_numpy()
    out["price_median"] = g.median().reindex(out["item_id"]).to_numpy()
    out["price_mean"] = out["price_mean"].astype("float64")
    out["price_median"] = out["price_median"].astype("float64")
    out["n_events"] = np.bincount(events["item_id"].to_numpy(), minlength=n).astype(np.int64)
    ids = events["item_id"].to_numpy()
    for name, values in df_sorted_attrs.items():
        out[name] = _mode_per_id(ids, values).reindex(out["item_id"]).to_numpy()
    if side is not None:
        side = side.set_index("key")
        for col in side.columns:
            mapped = side[col].reindex(keys.to_numpy()).to_numpy()
            if col in out.columns:  # the side table fills what the events do not say
                out[col] = np.where(pd.isna(out[col].to_numpy()), mapped, out[col].to_numpy())
            else:
                out[col] = mapped
    if "category" not in out.columns:
        out["category"] = None
    if "attributes" not in out.columns:
        out["attributes"] = [[] for _ in range(n)]
    else:
        out["attributes"] = [list(a) if isinstance(a, (list, np.ndarray)) else [] for a in out["attributes"]]
    out["category"] = out["category"].astype("str").where(out["category"].notna(), None)
    first = list(ITEM_SCHEMA.names)
    return out[first + [c for c in out.columns if c not in first]]


def build_users(events: pd.DataFrame, attrs: dict[str, pd.Series], user_key: pd.Series, raw_keys: pd.Series,
                side: pd.DataFrame | None) -> pd.DataFrame:
    """One row per dense user id: ``user_key`` (pseudonym), the latest value of each attribute, side-table
    columns (joined on the raw key in memory), ``n_events``."""
    out = pd.DataFrame({"user_id": np.arange(len(user_key), dtype=np.int64), "user_key": user_key.astype("string")})
    ids = events["user_id"].to_numpy()
    for name, values in attrs.items():  # the latest non-null value (events are sorted by user, time)
        s = pd.Series(values.to_numpy(), index=ids).dropna()
        out[name] = s.groupby(level=0).last().reindex(out["user_id"]).to_numpy()
    if side is not None:
        side = side.set_index("key")
        for col in side.columns:
            out[col] = side[col].reindex(raw_keys.to_numpy()).to_numpy()
    out["n_events"] = np.bincount(ids, minlength=len(user_key)).astype(np.int64)
    return out


def check_pseudonyms(keys: pd.Series) -> None:
    """With ``data.user_key_pseudonymised=true`` every user key must look like ``pseudonymise_one``'s output
    (16 lower-case hex characters): a clear-text id must never pass through unhashed."""
    ok = keys.str.fullmatch(r"[0-9a-f]{16}").fillna(False).to_numpy(bool)
    if not ok.all():
        bad = keys[~ok].iloc[0]
        raise DataConfigError(f"data.user_key_pseudonymised=true but user key {bad!r} is not a pseudonym "
                              f"(16 hex characters, features.privacy.pseudonymise_one); "
                              f"{int((~ok).sum())} such key(s). Set data.user_key_pseudonymised=false for raw ids.")


def input_stats(raw: RawData) -> dict[str, dict[str, int]]:
    """Per input file, before cleaning: parsed rows and distinct users, items and orders (to compare
    with published figures)."""
    df = raw.frame
    out = {}
    for i, name in enumerate(raw.files):
        part = df[df["src_file"].to_numpy() == i] if len(raw.files) > 1 else df
        st = {"rows": int(len(part))}
        for col, key in (("user", "distinct_users"), ("item", "distinct_items"), ("order_id", "distinct_orders")):
            if col in part.columns:
                st[key] = int(part[col].nunique())
        out[name] = st
    return out


def sorted_attributes(df: pd.DataFrame, order: np.ndarray) -> dict[str, pd.Series]:
    """Attribute columns of the cleaned frame, reordered like the events (``order``)."""
    extra = [c for c in df.columns if c not in ("user", "item", "event", "ts", "price", "quantity", "rating", "total",
                                                  "session_id", "order_id", "src_file", "src_row", "file_row")]
    if not extra:
        return {}
    return {c: df[c].iloc[order].reset_index(drop=True) for c in extra}
