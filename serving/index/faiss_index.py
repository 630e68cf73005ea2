"""One FAISS index (inner product) from a factory string, with query-time filters.

Filters run by over-fetching and filtering (``filter: overfetch``) or with a FAISS ``IDSelector`` in the
search parameters (``filter: selector``). Over-fetch falls back to the selector for the few queries where
filtering left fewer than ``k`` results although enough items qualify, so both strategies return the same
items. With an ``allowed`` mask the search widens (``filtered_search_params``, nprobe / efSearch divided by
the allowed fraction) so recall against filtered exact search holds.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from serving.index.base import CandidateIndex, IdRows, pad, row_selector
from serving.index.gpu import to_gpu_if_present
from serving.index.settings import IndexConfigError, IndexSettings, validate_settings


class FaissIndex(CandidateIndex):
    """A FAISS index (inner product) built from a factory string; on the GPU when FAISS has one."""

    backend = "faiss"

    def __init__(self, index, ids: np.ndarray, *, factory: str, search_params: Mapping[str, Any] | None = None,
                 filter: str = "overfetch", overfetch: int = 4, device: str = "cpu",
                 filtered_search_params: Mapping[str, Any] | None = None):
        self.index = index
        self.ids = np.asarray(ids, np.int64)
        self.n_items = int(index.ntotal)
        self.dim = int(index.d)
        self.factory = factory
        self.search_params = dict(search_params or {})
        self.filtered_search_params = dict(filtered_search_params or {})
        self.filter = filter
        self.overfetch = int(overfetch)
        self.device = device
        self._id_rows = IdRows(self.ids)
        self._identity = self._id_rows.identity
        self._apply_search_params()

    # building / saving --------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: np.ndarray, settings: IndexSettings, ids: np.ndarray | None = None,
              seed: int = 0) -> "FaissIndex":
        import faiss

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, d = emb.shape
        validate_settings(settings, n, d)
        index = faiss.index_factory(d, settings.factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            train = emb
            if settings.train_size and settings.train_size < n:
                train = emb[np.sort(rng.choice(n, settings.train_size, replace=False))]
            index.train(train)
        index.add(emb)
        index, device = to_gpu_if_present(index, settings.use_gpu)
        return cls(index, np.arange(n) if ids is None else ids, factory=settings.factory,
                   search_params=settings.search_params, filtered_search_params=settings.filtered_search_params,
                   filter=settings.filter,
                   overfetch=settings.overfetch, device=device)

    def cpu_index(self):
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if self.device.startswith("cuda") else self.index

    def _apply_search_params(self) -> None:
        import faiss

        if not self.search_params:
            return
        ps = faiss.GpuParameterSpace() if self.device.startswith("cuda") else faiss.ParameterSpace()
        for name, value in self.search_params.items():
            try:
                ps.set_index_parameter(self.index, name, value)
            except RuntimeError as e:  # faiss raises RuntimeError for unknown parameters
                raise IndexConfigError(f"index.search_params.{name}={value}: not valid for {self.factory!r} ({e})") from e

    # searching -----------------------------------------------------------------------------------
    def search(self, queries, k, exclude=None, allowed=None):
        q = self._check(queries, k, exclude, allowed)
        if exclude is None and allowed is None:
            s, r = self.index.search(q, min(k, self.n_items))
            return pad(s, self._rows_to_ids(r), k)
        if self.filter == "selector" and not self.device.startswith("cuda"):
            return self._search_selector(q, k, exclude, allowed, range(q.shape[0]))
        return self._search_overfetch(q, k, exclude, allowed)

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        if self._identity:  # row == item id; -1 (no result) stays -1
            return rows.astype(np.int64, copy=False)
        return np.where(rows >= 0, self.ids[rows], -1)  # ids[-1] is masked out by the where

    def _search_overfetch(self, q, k, exclude, allowed):
        b = q.shape[0]
        max_ex = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        frac = 1.0 if allowed is None else max(np.count_nonzero(allowed) / len(allowed), 1e-6)
        kk = int(min(self.n_items, np.ceil((k * self.overfetch) / min(1.0, frac * 4) ) + max_ex))
        kk = max(kk, min(k, self.n_items))
        s, r = self.index.search(q, kk)
        valid = r >= 0
        if allowed is not None:
            valid &= allowed[np.clip(r, 0, None)]
        if exclude is not None:
            for j, ex in enumerate(exclude):
                if len(ex):
                    valid[j] &= ~np.isin(r[j], self._id_rows.existing(ex))
        out_s = np.full((b, k), -np.inf, np.float32)
        out_r = np.full((b, k), -1, np.int64)
        short = []
        n_allowed = self.n_items if allowed is None else int(np.count_nonzero(allowed))
        for j in range(b):
            keep = np.flatnonzero(valid[j])[:k]
            out_s[j, :len(keep)] = s[j, keep]
            out_r[j, :len(keep)] = r[j, keep]
            if len(keep) < k and kk < self.n_items:
                qualifying = n_allowed - (len(exclude[j]) if exclude is not None else 0)
                if qualifying > len(keep):
                    short.append(j)
        if short:  # too few survived the filter: ask FAISS again with an IDSelector for those queries
            s2, i2 = self._search_selector(q, k, exclude, allowed, short)
            out_s[short], out_r[short] = s2, self._id_rows(i2)
        return pad(out_s, self._rows_to_ids(out_r), k)

    def _params(self, sel, allowed_fraction: float | None = None):
        """Search parameters carrying the selector. With an ``allowed`` mask (``allowed_fraction``
        given) ``filtered_search_params`` replace ``search_params`` and the search widens further
        (nprobe / efSearch divided by the allowed fraction, capped): otherwise the probed
        neighbourhood of the query may hold few allowed items and recall against filtered exact
        search drops. A refine stage (``...,RFlat``) gets the selector on its base index (the
        refinement only re-ranks what the base returned) and keeps ``k_factor_rf``."""
        import faiss

        if allowed_fraction is None:
            return self._params_for(faiss.downcast_index(self.index), sel, 1.0, self.search_params)
        boost = 1.0 / max(allowed_fraction, 1e-3)
        params = {**self.search_params, **self.filtered_search_params}
        return self._params_for(faiss.downcast_index(self.index), sel, boost, params)

    def _params_for(self, index, sel, boost: float, sp: Mapping[str, Any]):
        import faiss

        if isinstance(index, faiss.IndexPreTransform):
            return self._params_for(faiss.downcast_index(index.index), sel, boost, sp)
        if isinstance(index, faiss.IndexRefine):
            base = self._params_for(faiss.downcast_index(index.base_index), sel, boost, sp)
            k_factor = float(sp.get("k_factor_rf", index.k_factor))
            params = faiss.IndexRefineSearchParameters(k_factor=k_factor, base_index_params=base)
            params.base_ref = base  # the C++ object only points at the base parameters: keep them alive
            return params
        if isinstance(index, faiss.IndexIVF):
            nprobe = int(sp.get("nprobe", index.nprobe))
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(min(index.nlist, np.ceil(nprobe * boost))))
        if isinstance(index, faiss.IndexHNSW):
            ef = int(sp.get("efSearch", index.hnsw.efSearch))
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(min(self.n_items, np.ceil(ef * boost))))
        return faiss.SearchParameters(sel=sel)

    def _search_selector(self, q, k, exclude, allowed, rows):
        rows = list(rows)
        kk = min(k, self.n_items)
        allowed_bits = None if allowed is None else np.packbits(allowed, bitorder="little")
        frac = None if allowed is None else np.count_nonzero(allowed) / len(allowed)
        out_s = np.full((len(rows), kk), -np.inf, np.float32)
        out_r = np.full((len(rows), kk), -1, np.int64)
        if exclude is None:  # one selector for the whole batch
            sel, _keep = row_selector(self.n_items, None, allowed_bits)
            s, r = self.index.search(q[rows], kk, params=self._params(sel, frac))
            out_s[:], out_r[:] = s, r
        else:
            for n, j in enumerate(rows):
                sel, _keep = row_selector(self.n_items, self._id_rows.existing(exclude[j]), allowed_bits)
                s, r = self.index.search(q[j:j + 1], kk, params=self._params(sel, frac))
                out_s[n], out_r[n] = s[0], r[0]
        return pad(out_s, self._rows_to_ids(out_r), k)
