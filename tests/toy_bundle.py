"""A tiny bundle-shaped folder for tests of the index, the ranker and build_index (no real data).

Items fall in a few categories; each category has a centroid and item embeddings are centroid +
noise, so neighbours are meaningful. ``encoder.onnx`` mean-pools the embeddings of the history.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

N_CATS = 5


def toy_embeddings(n_items: int = 300, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, N_CATS, n_items)
    centroids = rng.normal(size=(N_CATS, dim)).astype(np.float32)
    emb = centroids[cats] + 0.5 * rng.normal(size=(n_items, dim)).astype(np.float32)
    return emb.astype(np.float32), cats


class MeanPoolEncoder(torch.nn.Module):
    def __init__(self, emb: np.ndarray):
        super().__init__()
        table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])
        self.table = torch.nn.Parameter(torch.from_numpy(table), requires_grad=False)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        e = self.table[item_seq]
        mask = (item_seq > 0).float().unsqueeze(-1)
        return (e * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def make_bundle(root: Path, n_items: int = 300, dim: int = 16, max_len: int = 20, encoder: bool = True,
                seed: int = 0) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    emb, cats = toy_embeddings(n_items, dim, seed)
    rng = np.random.default_rng(seed + 1)
    np.save(root / "item_embeddings.npy", emb)
    price = rng.lognormal(1.0, 0.8, n_items)
    price[::17] = np.nan
    pd.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64),
        "item_key": [f"SKU{i:05d}" for i in range(n_items)],
        "category": [f"cat{c}" for c in cats],
        "price": price,
        "popularity": rng.integers(0, 500, n_items).astype(np.int64),
        "available": np.ones(n_items, bool),
    }).to_parquet(root / "items.parquet")
    manifest = {"schema_version": 1, "name": root.name, "data": "toy", "model": "toy", "dim": dim,
                "n_items": n_items, "max_len": max_len, "encoder_inputs": ["item_seq"]}
    if encoder:
        enc = MeanPoolEncoder(emb).eval()
        torch.onnx.export(enc, (torch.ones(2, max_len, dtype=torch.int64),), str(root / "encoder.onnx"),
                          input_names=["item_seq"], output_names=["user_emb"], dynamo=False,
                          dynamic_axes={"item_seq": {0: "batch"}, "user_emb": {0: "batch"}})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
