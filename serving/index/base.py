"""What every candidate index shares: the ``search`` interface and its argument checks, result padding,
item id <-> row maps and FAISS ID selectors over rows."""
from __future__ import annotations

from typing import Collection, Sequence

import numpy as np


class IdRows:
    """Item id -> row of an index: the identity when rows are the ids, else a binary search (a dict would
    cost ~100 bytes per item)."""

    def __init__(self, ids: np.ndarray):
        self.n = len(ids)
        self.identity = bool(np.array_equal(ids, np.arange(self.n)))
        if not self.identity:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]

    def __call__(self, ids) -> np.ndarray:
        """Rows of ``ids``; -1 for ids not in the index."""
        ids = np.asarray(ids, np.int64)
        if self.identity:
            return ids
        at = np.clip(np.searchsorted(self._sorted, ids), 0, max(self.n - 1, 0))
        return np.where(self._sorted[at] == ids, self._order[at], -1).astype(np.int64)

    def existing(self, ids: Collection[int]) -> np.ndarray:
        """Rows of those of ``ids`` that are in the index (e.g. an exclude set)."""
        rows = self(np.fromiter((int(i) for i in ids), np.int64, len(ids)))
        return rows[(rows >= 0) & (rows < self.n)]


def row_selector(n_rows: int, ex_rows: np.ndarray | None, allowed_bits: np.ndarray | None):
    """(FAISS IDSelector over rows 0..n_rows-1: in the ``allowed_bits`` bitmap and not in ``ex_rows``, or None;
    the objects it points to, which the caller keeps alive while searching)."""
    import faiss

    keep = []  # FAISS selectors do not own their inputs
    sel = None
    if allowed_bits is not None:
        sel = faiss.IDSelectorBitmap(n_rows, faiss.swig_ptr(allowed_bits))
        keep.append(allowed_bits)
    if ex_rows is not None and len(ex_rows):
        ex_rows = np.ascontiguousarray(ex_rows, dtype=np.int64)
        batch = faiss.IDSelectorBatch(len(ex_rows), faiss.swig_ptr(ex_rows))
        notsel = faiss.IDSelectorNot(batch)
        keep += [ex_rows, batch]
        sel = notsel if sel is None else faiss.IDSelectorAnd(sel, notsel)
        if isinstance(sel, faiss.IDSelectorAnd):
            keep.append(notsel)
    return sel, keep


class CandidateIndex:
    """Common interface: ``search(queries, k, exclude=None, allowed=None) -> (scores, item_ids)``."""

    dim: int
    n_items: int
    placement = None  # serving.accelerators.Placement: where it searches and why (set by load_index)
    backend: str
    device: str

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[int]] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # shared argument checks -------------------------------------------------------------------
    def _check(self, queries: np.ndarray, k: int, exclude, allowed) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (B, {self.dim}), got {tuple(np.shape(queries))}")
        if k <= 0:
            raise ValueError(f"k={k}: must be >= 1")
        if exclude is not None and len(exclude) != q.shape[0]:
            raise ValueError(f"exclude: expected {q.shape[0]} sets (one per query), got {len(exclude)}")
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.n_items,):
                raise ValueError(f"allowed: expected a bool mask of shape ({self.n_items},), got {allowed.dtype} {allowed.shape}")
        return q


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (B, k') results to (B, k) with -inf / -1; mark -inf scores as id -1."""
    b, kk = ids.shape
    if kk < k:
        scores = np.concatenate([scores, np.full((b, k - kk), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((b, k - kk), -1, np.int64)], axis=1)
    scores = scores.astype(np.float32, copy=False)
    ids = ids.astype(np.int64, copy=False)
    ids[~np.isfinite(scores)] = -1
    scores[ids < 0] = -np.inf
    return scores, ids
