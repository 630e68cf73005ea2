"""An index on disk: ``<bundle>/index/`` with ``index.faiss`` (absent for ``torch_exact``; one
``index.part<i>.faiss`` per part with ``part_rows.npz`` for a norm-ranged index), ``ids.npy``
(row -> item id) and ``manifest.json``. ``save_index`` writes it, ``load_index`` reads it back (exact
search over the item embeddings when the bundle has no index). Errors are ``BundleError`` naming the file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from serving.accelerators import Placement, gpu_facts, retrieval_plan
from serving.bundle.contract import INDEX_DIR, MANIFEST, BundleError
from serving.bundle.tables import read_embeddings
from serving.index.base import CandidateIndex
from serving.index.exact import TorchExactIndex
from serving.index.faiss_index import FaissIndex
from serving.index.gpu import to_gpu_if_present
from serving.index.norm_ranged import NormRangedIndex

INDEX_FILE = "index.faiss"
PART_FILE = "index.part{}.faiss"  # norm-ranged index: one FAISS file per part
PART_ROWS_FILE = "part_rows.npz"  # norm-ranged index: rows of each part (arr_0, arr_1, ...)
IDS_FILE = "ids.npy"


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
    (out_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


def load_index(bundle_dir: Path, *, use_gpu: bool = True, embeddings: np.ndarray | None = None) -> CandidateIndex:
    """The index saved under ``bundle_dir/index/`` if any, else exact search over ``item_embeddings.npy``
    (``embeddings``: that array when the caller has read it already)."""
    bundle_dir = Path(bundle_dir)
    idx_dir = bundle_dir / INDEX_DIR
    man_path = idx_dir / MANIFEST
    if not man_path.exists():
        plan = retrieval_plan("torch_exact", gpu_facts(), use_gpu)
        return _placed(TorchExactIndex(read_embeddings(bundle_dir) if embeddings is None else embeddings,
                                       device=plan.device), plan)
    try:
        m = json.loads(man_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{man_path}: not valid JSON ({e})") from e
    ids = _load_ids(idx_dir / IDS_FILE)
    plan = retrieval_plan("torch_exact" if m.get("backend") == "torch_exact" else "faiss", gpu_facts(), use_gpu)
    if plan.backend == "torch_exact":  # saved as torch_exact, or FAISS without a GPU build on a CUDA machine
        emb = read_embeddings(bundle_dir) if embeddings is None else embeddings
        if len(ids) == len(emb) and np.array_equal(ids, np.arange(len(emb))):
            rows, row_ids = emb, None
        elif len(ids) and ids.min() >= 0 and ids.max() < len(emb):
            rows, row_ids = emb[ids], ids
        else:
            raise BundleError(f"{idx_dir / IDS_FILE}: ids outside 0..{len(emb) - 1} (item_embeddings.npy rows)")
        dtype = m.get("torch_dtype", "auto") if m.get("backend") == "torch_exact" else "auto"
        return _placed(TorchExactIndex(rows, row_ids, device=plan.device, dtype=dtype), plan)
    common = dict(filter=m.get("filter", "overfetch"), overfetch=int(m.get("overfetch", 4)))
    strata = m.get("norm_strata") or []
    if not strata:
        index, device = _read_faiss(idx_dir / INDEX_FILE, len(ids), idx_dir / IDS_FILE, m, use_gpu)
        return _placed(FaissIndex(index, ids, factory=m.get("factory") or "", search_params=m.get("search_params") or {},
                                  filtered_search_params=m.get("filtered_search_params") or {}, device=device,
                                  **common), plan)
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
    return _placed(NormRangedIndex(parts, part_rows, ids, strata), plan)


def _placed(index: CandidateIndex, plan: Placement) -> CandidateIndex:
    """``index`` with ``placement``: where it searches and why (``serving.accelerators``). A FAISS index that
    FAISS kept on the CPU (an index type without a GPU version) says so."""
    device = getattr(index, "device", plan.device)
    if plan.backend == "faiss" and plan.device == "cuda" and not str(device).startswith("cuda"):
        plan = Placement(plan.component, "cpu", plan.backend, str(device))
    index.placement = plan
    return index


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
