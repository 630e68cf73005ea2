"""Bundles for tests (no trained model).

- ``make_bundle``: a tiny bundle-shaped folder for tests of the index, the ranker and build_index. Items fall
  in a few categories; each category has a centroid and item embeddings are centroid + noise, so
  neighbours are meaningful. ``encoder.onnx`` mean-pools the embeddings of the history: it is the
  library's own mean-pool encoder, items table and manifest (``training.svd_retriever``), not copies.
- ``build_bundle_from_events``: a complete bundle from real interactions (SVD item embeddings).

The synthetic bundle of the demos and benchmarks is ``training.synthetic_bundle``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from features.privacy import pseudo_key, pseudonymise_one
from serving.bundle import ENCODER, ITEM_EMBEDDINGS, ITEMS, USERS, new_version
from training.svd_retriever import base_manifest, export_meanpool_encoder, items_table
from training.synthetic_bundle import export_mean_encoder

N_CATS = 5


def toy_embeddings(n_items: int = 300, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, N_CATS, n_items)
    centroids = rng.normal(size=(N_CATS, dim)).astype(np.float32)
    emb = centroids[cats] + 0.5 * rng.normal(size=(n_items, dim)).astype(np.float32)
    return emb.astype(np.float32), cats


def make_bundle(root: Path, n_items: int = 300, dim: int = 16, max_len: int = 20, encoder: bool = True,
                seed: int = 0) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    emb, cats = toy_embeddings(n_items, dim, seed)
    rng = np.random.default_rng(seed + 1)
    np.save(root / "item_embeddings.npy", emb)
    price = rng.lognormal(1.0, 0.8, n_items)
    price[::17] = np.nan
    items_table(np.arange(n_items), [f"SKU{i:05d}" for i in range(n_items)], [f"cat{c}" for c in cats], price,
                rng.integers(0, 500, n_items)).to_parquet(root / "items.parquet")
    manifest = base_manifest(root.name, "toy", "toy", emb, max_len)
    if encoder:
        export_meanpool_encoder(emb, max_len, root / "encoder.onnx")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def build_bundle_from_events(out_dir: str | Path, events: pd.DataFrame, *, dim: int = 32, max_len: int = 20,
                             name: str = "events", seed: int = 0, write_latest: bool = True) -> Path:
    """A bundle from real interactions, without a trained model: item embeddings are the truncated SVD of
    the user x item matrix, the encoder the recency-weighted mean of ``export_mean_encoder``.

    ``events`` columns: ``user`` (raw id), ``item_key`` (str), ``ts`` (UTC), ``event`` (``purchase`` counts
    as a purchase), optional ``price`` and ``category``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    out_dir = Path(out_dir)
    ev = events.sort_values("ts", kind="stable").reset_index(drop=True)
    item_keys, item_ids = np.unique(ev["item_key"].astype(str).to_numpy(), return_inverse=True)
    user_raw, user_ids = np.unique(ev["user"].astype(str).to_numpy(), return_inverse=True)
    n_items = len(item_keys)
    if n_items <= dim + 1:
        raise ValueError(f"events: {n_items} distinct items, need more than dim+1={dim + 1}")
    m = csr_matrix((np.ones(len(ev), np.float32), (user_ids, item_ids)), shape=(len(user_raw), n_items))
    m.data = np.log1p(m.data)  # repeated interactions count, sub-linearly
    u, sv, vt = svds(m, k=dim, random_state=seed)
    emb = (vt.T * np.sqrt(sv)).astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
    ev["item_id"], ev["user_id"] = item_ids, user_ids
    agg = {"popularity": ("item_id", "size")}
    if "price" in ev:
        agg["price"] = ("price", "median")
    if "category" in ev:
        agg["category"] = ("category", "first")
    items = ev.groupby("item_id").agg(**agg).reindex(np.arange(n_items))
    items = pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64), "item_key": item_keys.astype(str),
        "category": items["category"].astype(object) if "category" in items else None,
        "price": items["price"].astype(float) if "price" in items else np.nan,
        "popularity": items["popularity"].fillna(0).astype(np.int64), "available": True})
    key, _ = pseudo_key()
    ev = ev.sort_values(["user_id", "ts"], kind="stable")
    uid, iid = ev["user_id"].to_numpy(), ev["item_id"].to_numpy(np.int64)
    is_buy = (ev["event"] == "purchase").to_numpy()
    ts = pd.DatetimeIndex(pd.to_datetime(ev["ts"], utc=True)).to_numpy()
    bounds = np.searchsorted(uid, np.arange(len(user_raw) + 1))
    rows = []
    for u in range(len(user_raw)):
        a, b = bounds[u], bounds[u + 1]
        buy = is_buy[a:b]
        rows.append((u, pseudonymise_one(user_raw[u], key), iid[a:b][-max_len:].tolist(), iid[a:b][buy].tolist(),
                     ts[a:b][buy]))
    users = pd.DataFrame(rows, columns=["user_id", "user_key", "history", "purchases", "purchase_ts"])
    manifest = {"data": name, "model": "svd_mean_encoder", "dim": dim, "n_items": n_items, "max_len": max_len,
                "encoder_inputs": ["item_seq"], "device": "cpu", "metrics": {}}
    with new_version(out_dir.parent, out_dir.name, latest=write_latest, manifest=manifest) as draft:
        np.save(draft.path / ITEM_EMBEDDINGS, emb)
        items.to_parquet(draft.path / ITEMS, index=False)
        users.to_parquet(draft.path / USERS, index=False)
        export_mean_encoder(emb, max_len, draft.path / ENCODER)
    return out_dir
