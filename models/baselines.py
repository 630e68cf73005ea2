"""Closed-form baselines that every report shows next to the deep models.

- ``Popularity``: score = number of training interactions of the item (same list for everyone).
- ``BuyAgain``: the user's own past items first, by frequency then recency, every other item after
  them by popularity (what a replenishment shop's "buy it again" shelf shows).
- ``EASE`` (Steck, WWW 2019): item-item weights ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``, zero
  diagonal; a user's scores are ``x_u B``. Needs a dense ``n_items²`` matrix: ``fits_memory`` says when
  it does not, and ``ItemKNN`` (sparse cosine top-k neighbours) takes over.

All take a user × item binary CSR matrix of training histories and score CSR rows of histories.
Runs on the GPU with torch when asked (``device="cuda"``), else on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary user × item CSR matrix (duplicates count once)."""
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


@dataclass
class Popularity:
    n_items: int
    counts: np.ndarray | None = None

    def fit(self, x: sp.csr_matrix) -> "Popularity":
        self.counts = np.asarray(x.sum(0)).ravel().astype(np.float32)
        return self

    def score(self, hist: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.counts, (hist.shape[0], self.n_items)).copy()


@dataclass
class BuyAgain:
    """The user's own past items by frequency, ties by recency; then every other item by popularity.

    ``score(hist)`` reads each CSR row's entries in the order given, which must be chronological (the
    evaluation harness builds them so; duplicates = repeated events). For an item of the history:
    ``count + (last position + 1) / (len + 1)`` (>= 1); for any other item ``-1 + pop / (max pop + 1)``
    (in [-1, 0)), so every history item ranks above every other item. With the history removed from the
    ranking (discovery protocol) it is the popularity baseline.
    """

    n_items: int
    counts: np.ndarray | None = None

    def fit(self, x: sp.csr_matrix) -> "BuyAgain":
        self.counts = np.asarray(x.sum(0)).ravel().astype(np.float64)
        return self

    def score(self, hist: sp.csr_matrix) -> np.ndarray:
        n_rows = hist.shape[0]
        lens = np.diff(hist.indptr)
        rows = np.repeat(np.arange(n_rows), lens)
        pos = np.arange(len(hist.indices)) - np.repeat(hist.indptr[:-1], lens)
        count = np.zeros((n_rows, self.n_items))
        last = np.full((n_rows, self.n_items), -1.0)
        np.add.at(count, (rows, hist.indices), 1.0)
        np.maximum.at(last, (rows, hist.indices), pos.astype(np.float64))
        fallback = -1.0 + self.counts / (self.counts.max(initial=0.0) + 1.0)
        own = count + (last + 1.0) / (lens[:, None] + 1.0)
        return np.where(count > 0, own, fallback[None, :]).astype(np.float64)


def ease_bytes(n_items: int) -> int:
    """Peak memory of fitting EASE in float32 (Gram matrix, its inverse and a work copy)."""
    return 3 * 4 * n_items * n_items


@dataclass
class EASE:
    n_items: int
    l2: float = 500.0
    device: str = "cpu"
    weights: np.ndarray | None = None

    @staticmethod
    def fits_memory(n_items: int, max_bytes: int) -> bool:
        return ease_bytes(n_items) <= max_bytes

    def fit(self, x: sp.csr_matrix) -> "EASE":
        if self.l2 <= 0:
            raise ValueError(f"model.l2 must be > 0 for EASE, got {self.l2}")
        gram = (x.T @ x).toarray().astype(np.float32)
        g = torch.from_numpy(gram).to(self.device)
        g.diagonal().add_(self.l2)
        p = torch.linalg.inv(g)
        b = -p / p.diagonal().unsqueeze(0)
        b.diagonal().zero_()
        self.weights = b.cpu().numpy()
        return self

    def score(self, hist: sp.csr_matrix) -> np.ndarray:
        return np.asarray(hist @ self.weights, dtype=np.float32)


@dataclass
class ItemKNN:
    """Item-based k-nearest neighbours with cosine similarity; sparse, for catalogues EASE cannot hold."""

    n_items: int
    k: int = 100
    shrink: float = 10.0
    sim: sp.csr_matrix | None = None

    def fit(self, x: sp.csr_matrix, block: int = 2048) -> "ItemKNN":
        xt = x.T.tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(xt.multiply(xt).sum(1)).ravel())
        rows, cols, vals = [], [], []
        for start in range(0, self.n_items, block):
            stop = min(start + block, self.n_items)
            s = (xt[start:stop] @ xt.T).toarray()
            s /= np.outer(norms[start:stop], norms) + self.shrink + 1e-9
            s[np.arange(stop - start), np.arange(start, stop)] = 0.0
            k = min(self.k, self.n_items - 1)
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((stop - start, 0), int)
            r = np.repeat(np.arange(start, stop), top.shape[1])
            rows.append(r)
            cols.append(top.ravel())
            vals.append(s[r - start, top.ravel()])
        self.sim = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(self.n_items, self.n_items))
        return self

    def score(self, hist: sp.csr_matrix) -> np.ndarray:
        return np.asarray((hist @ self.sim).toarray(), dtype=np.float32)
