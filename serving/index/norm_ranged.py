"""Norm-range partitioning (``index.norm_strata``; Yan et al., "Norm-Ranging LSH for Maximum Inner Product
Search", NeurIPS 2018).

Under inner product on unnormalised embeddings the top of a list is dominated by high-norm items, which
sit in many coarse cells at once, so one IVF index needs a wide ``nprobe`` to find them. With
``norm_strata`` the highest-norm items (a ``share`` of the catalogue per stratum) get their own small FAISS
index with its own factory and search parameters, the rest go to ``index.factory``; a query searches every
part and the results are merged by score.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from serving.index.base import CandidateIndex, IdRows, pad, row_selector
from serving.index.faiss_index import FaissIndex
from serving.index.settings import IndexSettings, stratum_sizes


class NormRangedIndex(CandidateIndex):
    """Norm-range partitioning: one ``FaissIndex`` per norm stratum (highest norms first) plus one for
    the rest; every query searches all parts (each with its own search parameters and the query's
    filters) and keeps the ``k`` best by score. See the module docstring."""

    backend = "faiss"

    def __init__(self, parts: Sequence[FaissIndex], part_rows: Sequence[np.ndarray], ids: np.ndarray,
                 strata: Sequence[Mapping[str, Any]]):
        self.parts = list(parts)
        self.part_rows = [np.asarray(r, np.int64) for r in part_rows]
        self.ids = np.asarray(ids, np.int64)
        self.n_items = int(sum(len(r) for r in self.part_rows))
        self.dim = self.parts[0].dim
        self.device = self.parts[0].device
        self.norm_strata = [dict(st) for st in strata]
        self._id_rows = IdRows(self.ids)
        self._row_maps = None  # per part, its global rows as a FAISS vector (IDSelectorTranslated), made on first use
        tail = self.parts[-1]
        self.factory, self.search_params = tail.factory, tail.search_params

    @classmethod
    def build(cls, embeddings: np.ndarray, settings: IndexSettings, ids: np.ndarray | None = None,
              seed: int = 0) -> "NormRangedIndex":
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = emb.shape[0]
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        order = np.argsort(-np.linalg.norm(emb, axis=1), kind="stable")
        bounds = np.cumsum([0, *stratum_sizes(settings, n)])
        part_settings = [settings.stratum(i) for i in range(len(settings.norm_strata))] + [settings.tail()]
        parts, part_rows = [], []
        for (a, b), ps in zip(zip(bounds[:-1], bounds[1:]), part_settings):
            rows = np.sort(order[a:b])
            parts.append(FaissIndex.build(emb[rows], ps, ids=ids[rows], seed=seed))
            part_rows.append(rows)
        return cls(parts, part_rows, ids, settings.norm_strata)

    @property
    def filter(self) -> str:
        return self.parts[-1].filter

    @filter.setter
    def filter(self, value: str) -> None:
        for p in self.parts:
            p.filter = value

    def search(self, queries, k, exclude=None, allowed=None):
        q = self._check(queries, k, exclude, allowed)
        if exclude is None and allowed is None:  # the hot path: straight to FAISS, ids mapped once per part
            found = []
            for p in self.parts:
                s, r = p.index.search(q, min(k, p.n_items))
                found.append((s, p._rows_to_ids(r)))
        elif self.filter == "selector" and not self.device.startswith("cuda"):
            found = self._search_shared_selector(q, k, exclude, None if allowed is None else np.asarray(allowed))
        else:
            allowed = None if allowed is None else np.asarray(allowed)
            found = [p.search(q, k, exclude=exclude, allowed=None if allowed is None else allowed[rows])
                     for p, rows in zip(self.parts, self.part_rows)]
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        at = np.arange(q.shape[0])[:, None]
        return pad(scores[at, best], ids[at, best], k)

    def _search_shared_selector(self, q, k, exclude, allowed):
        """Filtered search with one selector over the catalogue's rows per query, seen by every part through
        ``IDSelectorTranslated`` (part row -> catalogue row): the mask is packed once, not split per part."""
        import faiss

        if self._row_maps is None:
            self._row_maps = []
            for rows in self.part_rows:
                v = faiss.Int64Vector()
                faiss.copy_array_to_vector(np.ascontiguousarray(rows, np.int64), v)
                self._row_maps.append(v)
        bits = None if allowed is None else np.packbits(allowed, bitorder="little")
        frac = None if allowed is None else np.count_nonzero(allowed) / len(allowed)
        per_query = exclude is not None
        groups = [[j] for j in range(q.shape[0])] if per_query else [list(range(q.shape[0]))]
        out = [(np.full((q.shape[0], min(k, p.n_items)), -np.inf, np.float32),
                np.full((q.shape[0], min(k, p.n_items)), -1, np.int64)) for p in self.parts]
        for rows in groups:
            ex_rows = self._id_rows.existing(exclude[rows[0]]) if per_query else None
            sel, _keep = row_selector(self.n_items, ex_rows, bits)
            for (s_out, i_out), p, row_map in zip(out, self.parts, self._row_maps):
                translated = None if sel is None else faiss.IDSelectorTranslated(row_map, sel)  # empty exclude set
                s, r = p.index.search(q[rows], s_out.shape[1], params=p._params(translated, frac))
                s_out[rows], i_out[rows] = s, p._rows_to_ids(r)
        return out
