"""Exact candidate retrieval with torch: a matrix product + top-k (fp16 or bf16 on CUDA, fp32 on CPU)."""
from __future__ import annotations

import numpy as np

from serving.index.base import CandidateIndex, pad
from serving.index.settings import IndexConfigError


class TorchExactIndex(CandidateIndex):
    """Exact top-k by matrix product with torch: fp16 (or bf16) on CUDA, fp32 on CPU."""

    backend = "torch_exact"

    def __init__(self, embeddings: np.ndarray, ids: np.ndarray | None = None, *, device: str | None = None,
                 dtype: str = "auto", query_batch: int = 1024):
        import torch

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.n_items, self.dim = emb.shape
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "float16" if self.device.startswith("cuda") else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise IndexConfigError(f"index.torch_dtype={dtype!r}: expected auto, float32, float16 or bfloat16")
        self.dtype = dtype
        self._torch_dtype = getattr(torch, dtype)
        self._emb = torch.from_numpy(emb).to(self.device, self._torch_dtype)
        self.ids = np.arange(self.n_items, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.query_batch = int(query_batch)

    def search(self, queries, k, exclude=None, allowed=None):
        import torch

        q = self._check(queries, k, exclude, allowed)
        kk = min(k, self.n_items)
        allowed_t = None if allowed is None else torch.from_numpy(np.asarray(allowed)).to(self.device)
        row_of = None
        if exclude is not None and not np.array_equal(self.ids, np.arange(self.n_items)):
            row_of = {int(i): r for r, i in enumerate(self.ids)}
        out_s, out_i = [], []
        with torch.inference_mode():
            for start in range(0, q.shape[0], self.query_batch):
                qb = torch.from_numpy(q[start:start + self.query_batch]).to(self.device, self._torch_dtype)
                s = (qb @ self._emb.T).float()
                if allowed_t is not None:
                    s.masked_fill_(~allowed_t[None, :], float("-inf"))
                if exclude is not None:
                    rows, cols = [], []
                    for j, ex in enumerate(exclude[start:start + self.query_batch]):
                        for item in ex:
                            r = row_of.get(int(item)) if row_of is not None else int(item)
                            if r is not None and 0 <= r < self.n_items:
                                rows.append(j)
                                cols.append(r)
                    if rows:
                        s[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)] = float("-inf")
                top_s, top_r = torch.topk(s, kk, dim=1)
                out_s.append(top_s.cpu().numpy())
                out_i.append(self.ids[top_r.cpu().numpy()])
        return pad(np.concatenate(out_s), np.concatenate(out_i), k)
