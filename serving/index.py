"""Candidate retrieval over item embeddings: FAISS indexes (CPU, or GPU when FAISS sees one) and an
exact torch backend (matrix product + top-k; fp16 on CUDA, fp32 on CPU).

Every backend has the same ``search`` method: inner-product scores of float32 queries against the
item embeddings, best first, with query-time filters:

- ``exclude[b]``: item ids never returned for query ``b`` (e.g. already bought);
- ``allowed``: a boolean mask over items (a category, items in stock).

FAISS filters run either by over-fetching and filtering (``filter: overfetch``) or with a FAISS
``IDSelector`` passed in the search parameters (``filter: selector``). ``scripts/bench_index.py``
measures both; the conf default is the faster one. Over-fetch falls back to the selector for the
few queries where filtering left fewer than ``k`` results although enough items qualify, so both
strategies return the same items.

Norm-range partitioning (``index.norm_strata``, Yan et al., "Norm-Ranging LSH for Maximum Inner
Product Search", NeurIPS 2018): under inner product on unnormalised embeddings the top of a list is
dominated by high-norm items, which sit in many coarse cells at once, so one IVF index needs a wide
``nprobe`` to find them. With ``norm_strata`` the highest-norm items (a ``share`` of the catalogue per
stratum) get their own small FAISS index with its own factory and search parameters, the rest go to
``index.factory``; a query searches every part and the results are merged by score.

An index is saved as ``<bundle>/index/`` with ``index.faiss`` (absent for ``torch_exact``; one
``index.part<i>.faiss`` per part with ``part_rows.npz`` for a norm-ranged index), ``ids.npy``
(row -> item id) and ``manifest.json``; ``load_index`` reads it back.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

INDEX_DIRNAME = "index"
INDEX_FILE = "index.faiss"
PART_FILE = "index.part{}.faiss"  # norm-ranged index: one FAISS file per part
PART_ROWS_FILE = "part_rows.npz"  # norm-ranged index: rows of each part (arr_0, arr_1, ...)
IDS_FILE = "ids.npy"
EMBEDDINGS_FILE = "item_embeddings.npy"
BACKENDS = ("faiss", "torch_exact")
FILTERS = ("overfetch", "selector")


class BundleError(ValueError):
    """An empty, missing or corrupt bundle file; the message names the file."""


class IndexConfigError(ValueError):
    """An index setting that does not fit the catalogue or the bundle; the message names the setting."""


@dataclass
class IndexSettings:
    """The ``index`` config group as a typed record (every default lives in ``conf/index/``)."""

    name: str
    backend: str  # faiss | torch_exact
    factory: str | None = None  # FAISS index_factory string, e.g. "HNSW32,Flat"
    search_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"nprobe": 32} or {"efSearch": 256}
    # with an ``allowed`` mask: these replace search_params (then widened by 1 / allowed fraction)
    filtered_search_params: dict[str, Any] = field(default_factory=dict)
    filter: str = "selector"  # selector | overfetch
    overfetch: int = 4  # fetch k * overfetch (+ the largest exclude set) before filtering
    train_size: int | None = None  # vectors used to train IVF/PQ (null = all)
    use_gpu: bool = True  # move FAISS to the GPU when faiss.get_num_gpus() > 0 / torch CUDA for exact
    torch_dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16
    query_batch: int = 1024  # exact backend: queries per matrix product
    dim: int | None = None  # expected embedding dimension; null = whatever the bundle has
    recall_queries: int = 1000  # sample queries for the manifest's recall against exact
    recall_k: int = 100
    # norm-range partitioning: [{share, factory, search_params}, ...], highest norms first; the rest of
    # the catalogue goes to ``factory`` / ``search_params`` above. Empty = one index.
    norm_strata: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "IndexSettings":
        d = dict(cfg)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IndexConfigError(f"index: unknown setting(s) {unknown}")
        d["search_params"] = dict(d.get("search_params") or {})
        d["filtered_search_params"] = dict(d.get("filtered_search_params") or {})
        s = cls(**d)
        if s.backend not in BACKENDS:
            raise IndexConfigError(f"index.backend={s.backend!r}: expected one of {BACKENDS}")
        if s.filter not in FILTERS:
            raise IndexConfigError(f"index.filter={s.filter!r}: expected one of {FILTERS}")
        if s.backend == "faiss" and not s.factory:
            raise IndexConfigError("index.factory is required when index.backend=faiss")
        if s.overfetch < 1:
            raise IndexConfigError(f"index.overfetch={s.overfetch}: must be >= 1")
        s.norm_strata = [_stratum_cfg(i, st, s.backend) for i, st in enumerate(s.norm_strata or [])]
        if s.norm_strata and sum(st["share"] for st in s.norm_strata) >= 1.0:
            raise IndexConfigError(f"index.norm_strata: shares {[st['share'] for st in s.norm_strata]} must sum "
                                   "to less than 1 (the rest of the catalogue goes to index.factory)")
        return s

    def stratum(self, i: int) -> "IndexSettings":
        """Settings of norm stratum ``i`` (its factory and search parameters, everything else shared)."""
        st = self.norm_strata[i]
        return replace(self, factory=st["factory"], search_params=dict(st["search_params"]),
                       filtered_search_params=dict(st["filtered_search_params"]), norm_strata=[])

    def tail(self) -> "IndexSettings":
        """Settings of the index holding the items below every norm stratum."""
        return replace(self, norm_strata=[])


def _stratum_cfg(i: int, st: Any, backend: str) -> dict[str, Any]:
    """``index.norm_strata[i]`` checked and completed (missing parameter groups = {}); errors name the field."""
    where = f"index.norm_strata[{i}]"
    if backend != "faiss":
        raise IndexConfigError(f"index.norm_strata: only for index.backend=faiss, not {backend!r}")
    if not isinstance(st, Mapping):
        raise IndexConfigError(f"{where}={st!r}: expected a mapping with share, factory, search_params")
    unknown = sorted(set(st) - {"share", "factory", "search_params", "filtered_search_params"})
    if unknown:
        raise IndexConfigError(f"{where}: unknown setting(s) {unknown}")
    share = st.get("share")
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 < float(share) < 1.0:
        raise IndexConfigError(f"{where}.share={share!r}: expected a fraction of the catalogue in (0, 1)")
    if not st.get("factory"):
        raise IndexConfigError(f"{where}.factory is required")
    return {"share": float(share), "factory": str(st["factory"]), "search_params": dict(st.get("search_params") or {}),
            "filtered_search_params": dict(st.get("filtered_search_params") or {})}


def stratum_sizes(settings: IndexSettings, n_items: int) -> list[int]:
    """Items per part of a norm-ranged index (strata first, the tail last); ``[n_items]`` without strata."""
    sizes = [int(np.ceil(st["share"] * n_items)) for st in settings.norm_strata]
    return [*sizes, n_items - sum(sizes)]


def validate_settings(s: IndexSettings, n_items: int, dim: int, where: str = "index") -> None:
    """Fail before building when the config cannot fit this catalogue; names the setting.

    Works for any factory form with an ``IVF<nlist>`` term (``IVF4096,Flat``, ``IVF16384_HNSW32,Flat``,
    ``IVF1024,PQ64x4fs,RFlat``, ``PCA32,IVF256,SQ8``...): nlist against the catalogue and the training
    sample, nprobe against nlist, PQ sub-quantisers against the dimension. Then a dry run: the factory
    string is parsed into an empty index of this dimension and every ``search_params`` entry is set on
    it, so a malformed factory or a parameter the index does not have fails here, not after training.
    """
    if n_items <= 0:
        raise IndexConfigError("the catalogue is empty (0 item embeddings)")
    if s.dim is not None and int(s.dim) != dim:
        raise IndexConfigError(f"index.dim={s.dim} does not match the bundle's embedding dimension {dim}")
    if s.backend != "faiss":
        return
    if s.norm_strata:
        sizes = stratum_sizes(s, n_items)
        if min(sizes) < 1:
            raise IndexConfigError(f"index.norm_strata: parts of {sizes} items for a catalogue of {n_items}: "
                                   "every part (and the rest, in index.factory) needs at least one item")
        for i, n_part in enumerate(sizes[:-1]):
            validate_settings(s.stratum(i), n_part, dim, where=f"index.norm_strata[{i}]")
        validate_settings(s.tail(), sizes[-1], dim, where=where)
        return
    factory = s.factory or ""
    m = re.search(r"IVF(\d+)", factory)
    if m:
        nlist = int(m.group(1))
        train_n = min(n_items, s.train_size or n_items)
        if nlist > n_items:
            raise IndexConfigError(
                f"{where}.factory={factory!r}: nlist={nlist} is larger than the catalogue ({n_items} items)"
            )
        if nlist > train_n:
            raise IndexConfigError(
                f"index.train_size={s.train_size}: {train_n} training vectors < nlist={nlist} in {where}.factory"
            )
        for group in ("search_params", "filtered_search_params"):
            nprobe = getattr(s, group).get("nprobe")
            if nprobe is not None and int(nprobe) > nlist:
                raise IndexConfigError(f"{where}.{group}.nprobe={nprobe} is larger than nlist={nlist}")
    m = re.search(r"PQ(\d+)", factory)
    if m and dim % int(m.group(1)) != 0:
        raise IndexConfigError(
            f"{where}.factory={factory!r}: PQ sub-quantizers {m.group(1)} do not divide the dimension {dim}"
        )
    for group in ("search_params", "filtered_search_params"):
        for name, value in getattr(s, group).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 1:
                raise IndexConfigError(f"{where}.{group}.{name}={value!r}: expected a number >= 1")
    _dry_run_factory(s, dim, where)


def _dry_run_factory(s: IndexSettings, dim: int, where: str = "index") -> None:
    """Parse ``index.factory`` into an empty index and set ``index.search_params`` on it (no training)."""
    import faiss

    try:
        empty = faiss.index_factory(dim, s.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexConfigError(f"{where}.factory={s.factory!r}: not a valid FAISS factory string for dimension "
                               f"{dim} ({_faiss_error(e)})") from e
    ps = faiss.ParameterSpace()
    for group in ("search_params", "filtered_search_params"):
        for name, value in getattr(s, group).items():
            try:
                ps.set_index_parameter(empty, name, value)
            except RuntimeError as e:
                raise IndexConfigError(f"{where}.{group}.{name}={value}: not a parameter of {where}.factory="
                                       f"{s.factory!r}") from e


def _faiss_error(e: Exception) -> str:
    """The informative tail of a FAISS exception message."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(e))[-200:]


# --------------------------------------------------------------------------------------------------
# Backends


class _IdRows:
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


def _row_selector(n_rows: int, ex_rows: np.ndarray | None, allowed_bits: np.ndarray | None):
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


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
        return _pad(np.concatenate(out_s), np.concatenate(out_i), k)


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
        self._id_rows = _IdRows(self.ids)
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
            return _pad(s, self._rows_to_ids(r), k)
        if self.filter == "selector" and not self.device.startswith("cuda"):
            return self._search_selector(q, k, exclude, allowed, range(q.shape[0]))
        return self._search_overfetch(q, k, exclude, allowed)

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        if self._identity:  # row == item id; -1 (no result) stays -1
            return rows.astype(np.int64, copy=False)
        return np.where(rows >= 0, self.ids[rows], -1)  # ids[-1] is masked out by the where

    def _excluded_rows(self, ex: Collection[int]) -> np.ndarray:
        return self._id_rows.existing(ex)

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
                    valid[j] &= ~np.isin(r[j], self._excluded_rows(ex))
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
            out_s[short], out_r[short] = s2, self._ids_to_rows(i2)
        return _pad(out_s, self._rows_to_ids(out_r), k)

    def _ids_to_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of item ids; -1 for ids not in this index."""
        return self._id_rows(ids)

    def _selector(self, ex_rows: np.ndarray | None, allowed_bits: np.ndarray | None):
        return _row_selector(self.n_items, ex_rows, allowed_bits)

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
            sel, _keep = self._selector(None, allowed_bits)
            s, r = self.index.search(q[rows], kk, params=self._params(sel, frac))
            out_s[:], out_r[:] = s, r
        else:
            for n, j in enumerate(rows):
                sel, _keep = self._selector(self._excluded_rows(exclude[j]), allowed_bits)
                s, r = self.index.search(q[j:j + 1], kk, params=self._params(sel, frac))
                out_s[n], out_r[n] = s[0], r[0]
        return _pad(out_s, self._rows_to_ids(out_r), k)


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
        self._id_rows = _IdRows(self.ids)
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
        return _pad(scores[at, best], ids[at, best], k)

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
            sel, _keep = _row_selector(self.n_items, ex_rows, bits)
            for (s_out, i_out), p, row_map in zip(out, self.parts, self._row_maps):
                translated = None if sel is None else faiss.IDSelectorTranslated(row_map, sel)  # empty exclude set
                s, r = p.index.search(q[rows], s_out.shape[1], params=p._params(translated, frac))
                s_out[rows], i_out[rows] = s, p._rows_to_ids(r)
        return out


def _faiss_gpus() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the symbol
        return 0


def to_gpu_if_present(index, use_gpu: bool):
    """(``index`` on every GPU FAISS sees, "cuda (...)") when ``use_gpu`` and FAISS has a GPU, else (``index``,
    "cpu"). FAISS GPU lacks some index types (fast-scan PQ, refine stages): those stay on the CPU, logged."""
    import faiss

    if not use_gpu or _faiss_gpus() == 0:
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), f"cuda (faiss, {_faiss_gpus()} GPU)"
    except RuntimeError as e:  # e.g. "not implemented" for IndexIVFPQFastScan / IndexRefineFlat
        log.warning("FAISS GPU cannot hold a %s (%s): searching it on the CPU", type(index).__name__, _faiss_error(e))
        return index, "cpu (no FAISS GPU version of this index)"


# --------------------------------------------------------------------------------------------------
# Building, saving, loading


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


def load_embeddings(bundle_dir: Path) -> np.ndarray:
    """``item_embeddings.npy`` of a bundle, checked; errors name the file."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder not found: {bundle_dir}")
    path = bundle_dir / EMBEDDINGS_FILE
    if not path.exists():
        raise BundleError(f"{path}: missing (the bundle has no item embeddings)")
    try:
        emb = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure means a corrupt file
        raise BundleError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: {e})") from e
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise BundleError(f"{path}: expected a non-empty 2-d array (n_items, dim), got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise BundleError(f"{path}: expected float embeddings, got dtype {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    if not np.isfinite(emb).all():
        raise BundleError(f"{path}: contains NaN or infinite values")
    manifest = bundle_dir / "manifest.json"
    if manifest.exists():
        try:
            m = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{manifest}: not valid JSON ({e})") from e
        if m.get("dim") is not None and int(m["dim"]) != emb.shape[1]:
            raise BundleError(f"{path}: dimension {emb.shape[1]} differs from manifest.json dim={m['dim']}")
        if m.get("n_items") is not None and int(m["n_items"]) != emb.shape[0]:
            raise BundleError(f"{path}: {emb.shape[0]} rows differ from manifest.json n_items={m['n_items']}")
    return emb


@dataclass
class IndexManifest:
    """What ``<bundle>/index/manifest.json`` records."""

    name: str
    backend: str
    factory: str | None
    metric: str
    n_items: int
    dim: int
    search_params: dict[str, Any]
    filter: str
    overfetch: int
    device: str
    build_seconds: float
    recall_at_k: float | None
    recall_k: int
    recall_queries: int
    recall_query_source: str
    torch_dtype: str
    code_version: str
    embeddings_sha256: str | None = None
    created_at: str = ""
    norm_strata: list[dict[str, Any]] = field(default_factory=list)  # see IndexSettings.norm_strata
    filtered_search_params: dict[str, Any] = field(default_factory=dict)  # see IndexSettings


def save_index(index: CandidateIndex, out_dir: Path, manifest: IndexManifest) -> None:
    """Write ``index.faiss`` (FAISS only), ``ids.npy`` and ``manifest.json`` into ``out_dir``."""
    import faiss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(index, FaissIndex):
        faiss.write_index(index.cpu_index(), str(out_dir / INDEX_FILE))
    elif isinstance(index, NormRangedIndex):
        for i, part in enumerate(index.parts):
            faiss.write_index(part.cpu_index(), str(out_dir / PART_FILE.format(i)))
        np.savez(out_dir / PART_ROWS_FILE, *index.part_rows)
    np.save(out_dir / IDS_FILE, index.ids)
    (out_dir / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


def load_index(bundle_dir: Path, *, use_gpu: bool = True) -> CandidateIndex:
    """The index saved under ``bundle_dir/index/`` if any, else exact search over ``item_embeddings.npy``."""
    bundle_dir = Path(bundle_dir)
    idx_dir = bundle_dir / INDEX_DIRNAME
    man_path = idx_dir / "manifest.json"
    if not man_path.exists():
        return TorchExactIndex(load_embeddings(bundle_dir))
    try:
        m = json.loads(man_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{man_path}: not valid JSON ({e})") from e
    ids = _load_ids(idx_dir / IDS_FILE)
    if m.get("backend") == "torch_exact":
        emb = load_embeddings(bundle_dir)
        return TorchExactIndex(emb, ids if len(ids) == len(emb) else None, dtype=m.get("torch_dtype", "auto"))
    common = dict(filter=m.get("filter", "overfetch"), overfetch=int(m.get("overfetch", 4)))
    strata = m.get("norm_strata") or []
    if not strata:
        index, device = _read_faiss(idx_dir / INDEX_FILE, len(ids), idx_dir / IDS_FILE, m, use_gpu)
        return FaissIndex(index, ids, factory=m.get("factory") or "", search_params=m.get("search_params") or {},
                          filtered_search_params=m.get("filtered_search_params") or {}, device=device, **common)
    rows_path = idx_dir / PART_ROWS_FILE
    try:
        with np.load(rows_path, allow_pickle=False) as z:
            part_rows = [z[f"arr_{i}"].astype(np.int64) for i in range(len(strata) + 1)]
    except (OSError, KeyError, ValueError) as e:
        raise BundleError(f"{rows_path}: missing or unreadable ({type(e).__name__}: {e})") from e
    if sum(len(r) for r in part_rows) != len(ids):
        raise BundleError(f"{rows_path}: its parts hold {sum(len(r) for r in part_rows)} rows but "
                          f"{idx_dir / IDS_FILE} has {len(ids)} ids")
    params = [st.get("search_params") or {} for st in strata] + [m.get("search_params") or {}]
    filtered = [st.get("filtered_search_params") or {} for st in strata] + [m.get("filtered_search_params") or {}]
    factories = [st.get("factory") or "" for st in strata] + [m.get("factory") or ""]
    parts = []
    for i, rows in enumerate(part_rows):
        index, device = _read_faiss(idx_dir / PART_FILE.format(i), len(rows), rows_path, m, use_gpu)
        parts.append(FaissIndex(index, ids[rows], factory=factories[i], search_params=params[i],
                                filtered_search_params=filtered[i], device=device, **common))
    return NormRangedIndex(parts, part_rows, ids, strata)


def _read_faiss(path: Path, n_expected: int, ids_path: Path, m: Mapping[str, Any], use_gpu: bool):
    """(FAISS index read from ``path``, moved to the GPU when FAISS has one; device string)."""
    import faiss

    if not path.exists():
        raise BundleError(f"{path}: missing (index/manifest.json says backend={m.get('backend')!r})")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise BundleError(f"{path}: cannot be read as a FAISS index ({str(e).splitlines()[0] if str(e) else e})") from e
    if index.ntotal != n_expected:
        raise BundleError(f"{path}: holds {index.ntotal} vectors but {ids_path} has {n_expected} ids")
    return to_gpu_if_present(index, use_gpu)


def _load_ids(path: Path) -> np.ndarray:
    if not path.exists():
        raise BundleError(f"{path}: missing (the index has no id map)")
    try:
        ids = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BundleError(f"{path}: cannot be read as a .npy array ({type(e).__name__}: {e})") from e
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise BundleError(f"{path}: expected a 1-d integer array, got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
