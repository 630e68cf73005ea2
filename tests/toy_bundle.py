"""A tiny bundle-shaped folder for tests of the index, the ranker and build_index (no real data).

Items fall in a few categories; each category has a centroid and item embeddings are centroid +
noise, so neighbours are meaningful. ``encoder.onnx`` mean-pools the embeddings of the history: it is the
library's own mean-pool encoder, items table and manifest (``training.svd_retriever``), not copies.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.svd_retriever import base_manifest, export_meanpool_encoder, items_table

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
