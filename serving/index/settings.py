"""The ``index`` config group as a typed record, checked against the catalogue before anything is built.

``IndexSettings.from_cfg`` rejects unknown settings and impossible values naming the setting;
``validate_settings`` checks a config against a catalogue (nlist against the catalogue and the training
sample, nprobe against nlist, PQ split against the dimension, norm strata shares) and dry-runs the FAISS
factory string and search parameters on an empty index, so a bad config fails before training.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

BACKENDS = ("faiss", "torch_exact")
FILTERS = ("overfetch", "selector")


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
                               f"{dim} ({faiss_error(e)})") from e
    ps = faiss.ParameterSpace()
    for group in ("search_params", "filtered_search_params"):
        for name, value in getattr(s, group).items():
            try:
                ps.set_index_parameter(empty, name, value)
            except RuntimeError as e:
                raise IndexConfigError(f"{where}.{group}.{name}={value}: not a parameter of {where}.factory="
                                       f"{s.factory!r}") from e


def faiss_error(e: Exception) -> str:
    """The informative tail of a FAISS exception message."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(e))[-200:]
