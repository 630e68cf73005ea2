"""GPU placement of FAISS indexes: on every GPU FAISS sees, else (or for index types FAISS GPU lacks) the CPU."""
from __future__ import annotations

import logging

from serving.index.settings import faiss_error

log = logging.getLogger(__name__)


def faiss_gpu_count() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the symbol
        return 0


def to_gpu_if_present(index, use_gpu: bool):
    """(``index`` on every GPU FAISS sees, "cuda (...)") when ``use_gpu`` and FAISS has a GPU, else (``index``,
    "cpu"). FAISS GPU lacks some index types (fast-scan PQ, refine stages): those stay on the CPU, logged."""
    import faiss

    if not use_gpu or faiss_gpu_count() == 0:
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), f"cuda (faiss, {faiss_gpu_count()} GPU)"
    except RuntimeError as e:  # e.g. "not implemented" for IndexIVFPQFastScan / IndexRefineFlat
        log.warning("FAISS GPU cannot hold a %s (%s): searching it on the CPU", type(index).__name__, faiss_error(e))
        return index, "cpu (no FAISS GPU version of this index)"
