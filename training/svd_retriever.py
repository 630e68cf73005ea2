"""A quick fallback retriever in bundle shape: ``python -m training.svd_retriever model=ranker data=online_retail``.

Item embeddings = truncated SVD of the temporal-train user x item purchase matrix (log1p counts),
``V * sqrt(S)``; the "encoder" (``encoder.onnx``, same contract as a real bundle's) mean-pools the
embeddings of the user's history, so a user's score of item i is the mean co-occurrence-space
similarity of i to what the user bought. It exists so the ranker can be trained and measured on real
data without a trained neural retriever; a bundle from ``training.export`` is the real thing.

Publishes a bundle version ``${paths.artifacts}/retrievers/<data>-svd-<time>/`` (``serving.bundle.new_version``:
``item_embeddings.npy``, ``items.parquet``, ``users.parquet`` (pseudonymised keys, train-period history and
purchases), ``encoder.onnx``, ``manifest.json`` with ``trained_on``) and names it in
``${paths.artifacts}/retrievers/LATEST``; it does not touch ``${paths.bundles}/LATEST``. Settings:
``model.svd_retriever.{dim,max_len}`` in ``conf/model/ranker.yaml``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from scipy import sparse
from scipy.sparse.linalg import svds

from features.artifacts import file_sha256
from features.processed import load_items, load_split, load_users, processed_dir
from serving.bundle import ENCODER, ITEM_EMBEDDINGS, ITEMS, SCHEMA_VERSION, USERS, new_version

log = logging.getLogger(__name__)


class MeanPoolEncoder(torch.nn.Module):
    """``item_seq`` [B, L] (item_id + 1, 0 = padding) -> mean of the items' embeddings [B, dim]."""

    def __init__(self, emb: np.ndarray):
        super().__init__()
        table = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])
        self.table = torch.nn.Parameter(torch.from_numpy(table), requires_grad=False)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        e = self.table[item_seq]
        mask = (item_seq > 0).float().unsqueeze(-1)
        return (e * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def export_meanpool_encoder(emb: np.ndarray, max_len: int, path: Path) -> None:
    """Write ``encoder.onnx`` (the bundle contract: ``item_seq [B, max_len] -> user_emb [B, dim]``) mean-pooling ``emb``."""
    torch.onnx.export(MeanPoolEncoder(emb).eval(), (torch.ones(2, max_len, dtype=torch.int64),), str(path),
                      input_names=["item_seq"], output_names=["user_emb"], dynamo=False,
                      dynamic_axes={"item_seq": {0: "batch"}, "user_emb": {0: "batch"}})


def items_table(item_id, item_key, category, price, popularity, available=True) -> pd.DataFrame:
    """The bundle's ``items.parquet`` columns, in order (``serving/bundle_layout.md``)."""
    n = len(item_id)
    return pd.DataFrame({"item_id": np.asarray(item_id, np.int64), "item_key": [str(k) for k in item_key],
                         "category": list(category), "price": np.asarray(price, np.float64),
                         "popularity": np.asarray(popularity, np.int64), "available": np.broadcast_to(available, n).astype(bool)})


def base_manifest(name: str, data: str, model: str, emb: np.ndarray, max_len: int) -> dict:
    """The manifest keys every retriever bundle has (``serving/bundle_layout.md``)."""
    return {"schema_version": SCHEMA_VERSION, "name": name, "data": data, "model": model, "dim": int(emb.shape[1]),
            "n_items": int(emb.shape[0]), "max_len": int(max_len), "encoder_inputs": [{"name": "item_seq", "dtype": "int64"}]}


def _users_table(train: pd.DataFrame, users: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """The online store's initial state, as in a real bundle: history and purchases before the cut-off."""
    p = train[train["event"] == "purchase"].sort_values(["user_id", "ts", "src_row"], kind="stable")
    g = p.groupby("user_id", sort=True)
    out = pd.DataFrame({"history": g["item_id"].agg(lambda s: s.to_numpy()[-max_len:].tolist()),
                        "purchases": g["item_id"].agg(list), "purchase_ts": g["ts"].agg(list)}).reset_index()
    return users[["user_id", "user_key"]].merge(out, on="user_id", how="inner")


def run(cfg: DictConfig) -> Path:
    if "svd_retriever" not in cfg.model:
        raise ValueError(f"model={cfg.model.get('name')}: has no svd_retriever settings; run with model=ranker")
    dim, max_len = int(cfg.model.svd_retriever.dim), int(cfg.model.svd_retriever.max_len)
    pdir = processed_dir(cfg)
    train = load_split(pdir, "temporal", "train", columns=["user_id", "item_id", "event", "ts", "src_row"])
    items = load_items(pdir)
    n_items, n_users = len(items), int(train["user_id"].max()) + 1
    if dim >= min(n_items, n_users):
        raise ValueError(f"model.svd_retriever.dim={dim}: must be smaller than the catalogue ({n_items}) and the user count ({n_users})")
    p = train[train["event"] == "purchase"]
    X = sparse.csr_matrix((np.ones(len(p)), (p["user_id"], p["item_id"])), shape=(n_users, n_items))
    X.data = np.log1p(X.data)
    _, S, Vt = svds(X.astype(np.float64), k=dim, random_state=int(cfg.seed))
    emb = (Vt.T * np.sqrt(S)).astype(np.float32)
    root = Path(str(cfg.paths.artifacts)) / "retrievers"
    name = f"{cfg.data.name}-svd-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    period = [train["ts"].min(), train["ts"].max()] if len(train) else None
    manifest = {**base_manifest(name, str(cfg.data.name), "svd_meanpool", emb, max_len), "device": "cpu",
                "trained_on": {"data": str(cfg.data.name), "split": "temporal", "part": "train",
                               "period": [str(t) for t in period] if period else None},
                "input_hashes": {"processed_manifest": file_sha256(pdir / "manifest.json")}}
    with new_version(root, name, manifest=manifest) as draft:
        np.save(draft.path / ITEM_EMBEDDINGS, emb)
        pop = np.bincount(p["item_id"], minlength=n_items)
        items_table(items["item_id"], items["item_key"], items["category"], items["price_median"], pop).to_parquet(
            draft.path / ITEMS)
        _users_table(train, load_users(pdir), max_len).to_parquet(draft.path / USERS, index=False)
        export_meanpool_encoder(emb, max_len, draft.path / ENCODER)
    out = root / name
    log.info("SVD retriever (dim %d) over %d items -> %s", dim, n_items, out)
    return out


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        print(run(cfg))
    except ValueError as e:
        print(f"svd_retriever: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
