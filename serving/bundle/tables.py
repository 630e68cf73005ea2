"""Readers of a bundle's files into typed, read-only, in-memory tables; errors name the file and the field.

``read_embeddings`` (``item_embeddings.npy``, checked against the manifest), ``read_items_frame`` and
``read_catalog`` (``items.parquet``), ``load_users`` (``users.parquet``: the online store's initial state),
``load_bought_together`` and ``load_user_features`` (``user_features.parquet`` + ``.json``). Each file is
read once per bundle load (``serving.bundle.load``); the index and the ranker get the arrays from there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from serving.bundle.contract import (
    ITEM_EMBEDDINGS, MANIFEST, USER_COLUMNS, USER_FEATURES_SPEC, USER_FEATURES_TABLE, BundleError,
    read_manifest,
)


def read_embeddings(bundle_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> np.ndarray:
    """``item_embeddings.npy``: a finite, non-empty float32 ``[n_items, dim]`` array that agrees with the
    manifest's ``dim`` and ``n_items`` (``manifest`` given, else read when the bundle has one)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    path = bundle_dir / ITEM_EMBEDDINGS
    if not path.exists():
        raise BundleError(f"{path}: missing (the bundle has no item embeddings)")
    try:
        emb = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure means a corrupt file
        raise BundleError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: {e})") from e
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise BundleError(f"{path}: expected a non-empty 2-d array (n_items, dim), got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise BundleError(f"{path}: expected float embeddings, got dtype {emb.dtype}")
    emb = np.ascontiguousarray(emb, np.float32)
    if not np.isfinite(emb).all():
        raise BundleError(f"{path}: contains NaN or infinite values")
    if manifest is None and (bundle_dir / MANIFEST).exists():
        manifest = read_manifest(bundle_dir, validate=False)
    m = manifest or {}
    want = (m.get("n_items"), m.get("dim"))
    if any(w is not None and int(w) != got for w, got in zip(want, emb.shape)):
        raise BundleError(f"{path}: shape {emb.shape}, manifest.json says ({want[0]}, {want[1]}) "
                          f"(manifest.json dim={want[1]}, n_items={want[0]})")
    return emb


def read_items_frame(path: str | Path) -> pd.DataFrame:
    """``items.parquet`` as read (the ranker builds its item features from it)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: missing (required by serving/bundle_layout.md)")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - a corrupt file
        raise BundleError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class Catalog:
    """``items.parquet`` as arrays indexed by dense ``item_id`` (what the rules and the fallbacks read;
    the ranker's per-item features are ``models.ranker.ItemTable``)."""

    keys: np.ndarray            # object (str) item_key
    key_to_id: dict[str, int]
    category: np.ndarray        # object (str or None)
    category_code: np.ndarray   # int32, -1 = no category
    categories: tuple[str, ...]
    price: np.ndarray           # float64, nan = unknown
    popularity: np.ndarray      # float64
    available: np.ndarray       # bool
    popular_order: np.ndarray   # item ids by popularity, most popular first (available only)

    @property
    def all_available(self) -> bool:
        return bool(self.available.all())

    @property
    def n(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class UserState:
    """A known user's state from training: last items (oldest first) and purchases with their time."""

    user_id: int
    history: np.ndarray         # int64 item ids
    purchases: np.ndarray       # int64 item ids
    purchase_ts: np.ndarray     # float64 epoch seconds (same length as purchases)


@dataclass(frozen=True)
class UserFeatureTable:
    """``user_features.parquet`` in memory: one row of int64 codes per known user (0 = unknown value).

    ``codes`` has one extra, all-zero last row: the row of every user the table does not know (a new
    user, or one absent from the table), so a lookup is one dict probe plus one row index."""

    names: tuple[str, ...]          # the columns loaded, in ``codes`` column order
    codes: np.ndarray               # int64 [n_users + 1, len(names)]; last row = zeros
    row_of: dict[str, int]          # user_key -> row
    cardinalities: tuple[int, ...]  # per name, from user_features.json (codes lie in [0, cardinality))

    def row(self, user_key: str) -> int:
        """The row of ``user_key``; the all-zero row when the table does not know the user."""
        return self.row_of.get(user_key, len(self.codes) - 1)

    def select(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """The codes of ``names`` in that order: a contiguous ``[n_users + 1, len(names)]`` array."""
        pos = {n: j for j, n in enumerate(self.names)}
        return np.ascontiguousarray(self.codes[:, [pos[n] for n in names]])


def read_catalog(path: Path, n_items: int, df: pd.DataFrame | None = None) -> Catalog:
    """``items.parquet`` (or its already read frame ``df``) checked against ``n_items``, as a ``Catalog``."""
    df = read_items_frame(path) if df is None else df
    missing = [c for c in ("item_id", "item_key") if c not in df.columns]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    if len(df) != n_items:
        raise BundleError(f"{path}: {len(df)} rows, manifest.json n_items={n_items}")
    df = df.sort_values("item_id")
    if not np.array_equal(df["item_id"].to_numpy(), np.arange(n_items)):
        raise BundleError(f"{path}: item_id must be 0..{n_items - 1} (dense ids of the embeddings)")
    keys = df["item_key"].astype(str).to_numpy(dtype=object)
    category = df["category"].astype(object).where(df["category"].notna(), None).to_numpy(dtype=object) \
        if "category" in df.columns else np.full(n_items, None, dtype=object)
    cats = sorted({c for c in category if c is not None})
    code_of = {c: i for i, c in enumerate(cats)}
    category_code = np.array([code_of.get(c, -1) if c is not None else -1 for c in category], np.int32)
    price = df["price"].astype("float64").to_numpy(na_value=np.nan) if "price" in df.columns else np.full(n_items, np.nan)
    popularity = df["popularity"].astype("float64").fillna(0).to_numpy() if "popularity" in df.columns else np.zeros(n_items)
    available = df["available"].fillna(True).astype(bool).to_numpy().copy() if "available" in df.columns else np.ones(n_items, bool)
    order = np.argsort(-popularity, kind="stable")
    return Catalog(keys=keys, key_to_id={k: i for i, k in enumerate(keys)}, category=category,
                   category_code=category_code, categories=tuple(cats), price=price, popularity=popularity,
                   available=available, popular_order=order[available[order]].astype(np.int64))


def _list_column(table, name: str, n: int, dtype) -> list[np.ndarray]:
    """A list<...> column of an Arrow table as one numpy array per row (null lists -> empty)."""
    import pyarrow as pa

    if name not in table.column_names:
        return [np.zeros(0, dtype)] * n
    arr = table.column(name).combine_chunks()
    values = arr.values
    if pa.types.is_timestamp(values.type):  # -> float epoch seconds
        values = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        flat = values.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    else:
        flat = values.to_numpy(zero_copy_only=False).astype(dtype)
    offsets = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [flat[offsets[i]:offsets[i + 1]] if valid[i] else np.zeros(0, dtype) for i in range(n)]


def load_users(path: Path, n_items: int) -> dict[str, UserState]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in USER_COLUMNS if c not in table.column_names]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    n = table.num_rows
    user_ids = table.column("user_id").to_numpy()
    keys = table.column("user_key").to_pylist()
    hist = _list_column(table, "history", n, np.int64)
    purch = _list_column(table, "purchases", n, np.int64)
    pts = _list_column(table, "purchase_ts", n, np.float64) if "purchase_ts" in table.column_names else \
        [np.zeros(len(p)) for p in purch]
    for name, lists in (("history", hist), ("purchases", purch)):
        flat = np.concatenate(lists) if n else np.zeros(0, np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
            raise BundleError(f"{path}: column {name!r} has item ids out of range 0..{n_items - 1}")
    users: dict[str, UserState] = {}
    for i in range(n):
        if len(pts[i]) != len(purch[i]):
            raise BundleError(f"{path}: user_id={user_ids[i]}: purchases and purchase_ts differ in length")
        users[str(keys[i])] = UserState(int(user_ids[i]), hist[i], purch[i], pts[i])
    return users


def load_bought_together(path: Path, n_items: int, per_item: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """item_id -> (other item ids, confidence), best first, at most ``per_item`` each."""
    if not path.exists():
        return {}
    df = pd.read_parquet(path)
    missing = [c for c in ("item_id", "other_item_id") if c not in df.columns]
    if missing:
        raise BundleError(f"{path}: column(s) {missing} missing")
    score_col = "confidence" if "confidence" in df.columns else ("lift" if "lift" in df.columns else None)
    df = df[(df["item_id"].between(0, n_items - 1)) & (df["other_item_id"].between(0, n_items - 1))]
    if score_col is None:
        df = df.assign(confidence=1.0)
        score_col = "confidence"
    df = df.sort_values(["item_id", score_col], ascending=[True, False], kind="stable")
    df = df[df.groupby("item_id", sort=False).cumcount().to_numpy() < per_item]
    items = df["item_id"].to_numpy(np.int64)
    others = df["other_item_id"].to_numpy(np.int64)
    scores = df[score_col].to_numpy(np.float32)
    # one slice per item (numpy views; a pandas groupby loop held the GIL ~0.5 s per 2,000 items during hot swaps)
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]]) if len(items) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(items)]
    return {int(items[a]): (others[a:b], scores[a:b]) for a, b in zip(starts.tolist(), ends.tolist())}


def load_user_features(bundle_dir: Path, names: list[str], needed_by: str) -> UserFeatureTable:
    """The codes of ``names`` from ``user_features.parquet``, checked against ``user_features.json``
    (every code in ``[0, cardinality)``, keys unique). Column-wise numpy: no per-row Python loop."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.user_features import UserFeatureSpec

    path, spec_path = bundle_dir / USER_FEATURES_TABLE, bundle_dir / USER_FEATURES_SPEC
    for p in (path, spec_path):
        if not p.exists():
            raise BundleError(f"{p}: missing, but {needed_by} takes user features {names}")
    try:
        spec = UserFeatureSpec.from_json(json.loads(spec_path.read_text()))
        card_of = dict(zip(spec.names, spec.cardinalities))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise BundleError(f"{spec_path}: not a valid user-feature spec ({type(e).__name__}: {e})") from e
    unknown = [n for n in names if n not in card_of]
    if unknown:
        raise BundleError(f"{spec_path}: no feature(s) {unknown} (needed by {needed_by}; it lists {spec.names})")
    try:
        table = pq.read_table(path, columns=["user_key", *names])
    except Exception as e:  # noqa: BLE001 - a missing column or a corrupt file
        raise BundleError(f"{path}: cannot read columns {['user_key', *names]} ({type(e).__name__}: {e})") from e
    n = table.num_rows
    keys_col = table.column("user_key")
    if keys_col.null_count:
        raise BundleError(f"{path}: column 'user_key' has {keys_col.null_count} null value(s)")
    keys = keys_col.cast("string").to_numpy(zero_copy_only=False)
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise BundleError(f"{path}: column 'user_key' repeats {int(dup.sum())} key(s)")
    codes = np.zeros((n + 1, len(names)), np.int64)
    for j, name in enumerate(names):
        col = pc.fill_null(table.column(name), 0)  # a null code = unknown
        try:
            codes[:n, j] = col.to_numpy(zero_copy_only=False)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{path}: column {name!r} is not integer codes ({col.type})") from e
        bad = (codes[:n, j] < 0) | (codes[:n, j] >= card_of[name])
        if bad.any():
            raise BundleError(f"{path}: column {name!r} has code {int(codes[:n, j][bad][0])} outside "
                              f"[0, {card_of[name]}) (cardinality from {USER_FEATURES_SPEC})")
    return UserFeatureTable(names=tuple(names), codes=codes, row_of=dict(zip(keys.tolist(), range(n))),
                            cardinalities=tuple(int(card_of[n_]) for n_ in names))


