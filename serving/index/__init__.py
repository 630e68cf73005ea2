"""Candidate retrieval over item embeddings: FAISS indexes (CPU, or GPU when FAISS sees one) and an exact
torch backend (matrix product + top-k; fp16 on CUDA, fp32 on CPU).

Every backend has the same ``search(queries, k, exclude=None, allowed=None) -> (scores, item_ids)``:
inner-product scores of float32 queries against the item embeddings, best first, with query-time
filters (``exclude[b]``: item ids never returned for query ``b``; ``allowed``: a boolean mask over items).
``scripts/bench_index.py`` measures the backends and both filter strategies.

Modules, one concern each:

- ``settings``: ``IndexSettings`` (the ``index`` config group) and ``validate_settings`` (fail before building);
- ``base``: the ``CandidateIndex`` interface, result padding, id <-> row maps, FAISS ID selectors;
- ``exact``: ``TorchExactIndex``; ``faiss_index``: ``FaissIndex``; ``norm_ranged``: ``NormRangedIndex``
  (``index.norm_strata``: the highest-norm items in their own small indexes);
- ``gpu``: moving a FAISS index to the GPU, or keeping it on the CPU;
- ``build``: ``build_index`` and recall against exact search;
- ``persist``: ``<bundle>/index/`` on disk (``save_index``, ``load_index``); a bad file raises
  ``serving.bundle.BundleError``, a bad setting ``IndexConfigError``.
"""
from __future__ import annotations

from serving.index.base import CandidateIndex  # noqa: F401
from serving.index.build import build_index, exact_reference, recall_at_k  # noqa: F401
from serving.index.exact import TorchExactIndex  # noqa: F401
from serving.index.faiss_index import FaissIndex  # noqa: F401
from serving.index.norm_ranged import NormRangedIndex  # noqa: F401
from serving.index.persist import IndexManifest, load_index, save_index  # noqa: F401
from serving.index.settings import IndexConfigError, IndexSettings, stratum_sizes, validate_settings  # noqa: F401
