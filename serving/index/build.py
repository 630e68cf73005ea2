"""Building an index from item embeddings, and measuring it against exact search."""
from __future__ import annotations

import numpy as np

from serving.index.base import CandidateIndex
from serving.index.exact import TorchExactIndex
from serving.index.faiss_index import FaissIndex
from serving.index.norm_ranged import NormRangedIndex
from serving.index.settings import IndexConfigError, IndexSettings, validate_settings


def build_index(embeddings: np.ndarray, settings: IndexSettings, seed: int = 0) -> CandidateIndex:
    """Build the index the settings describe (validated first) over ``embeddings`` (row = item id)."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2:
        raise IndexConfigError(f"item embeddings must be 2-d (n_items, dim), got shape {emb.shape}")
    validate_settings(settings, emb.shape[0], emb.shape[1])
    if settings.backend == "torch_exact":
        import torch

        device = "cuda" if (settings.use_gpu and torch.cuda.is_available()) else "cpu"
        return TorchExactIndex(emb, device=device, dtype=settings.torch_dtype, query_batch=settings.query_batch)
    if settings.norm_strata:
        return NormRangedIndex.build(emb, settings, seed=seed)
    return FaissIndex.build(emb, settings, seed=seed)


def exact_reference(embeddings: np.ndarray) -> TorchExactIndex:
    """Exact fp32 search on the CPU: the yardstick for recall."""
    return TorchExactIndex(embeddings, device="cpu", dtype="float32")


def recall_at_k(index: CandidateIndex, exact: CandidateIndex, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the index also returns in its top-k."""
    _, got = index.search(queries, k)
    _, ref = exact.search(queries, k)
    hits = [len(set(g[g >= 0]) & set(r[r >= 0])) / max(1, int((r >= 0).sum())) for g, r in zip(got, ref)]
    return float(np.mean(hits))
