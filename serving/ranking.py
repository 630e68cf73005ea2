"""The ranker at serving time: one ONNX Runtime session over ``<bundle>/ranker.onnx``.

``Ranker.load(bundle)`` returns ``None`` when the bundle has no ranker (the service then keeps the
retrieval order); ``serving.bundle.load_bundle`` hands it the item table and embeddings it has already
read, so no bundle file is read twice. ``Ranker.score(requests)`` builds the features of every request with the same
code as training (``models.ranker.build_batch``), runs one batched ONNX Runtime call and returns
one float32 score array per request (higher = better).

The CUDA execution provider is asked for when ONNX Runtime offers it, and ``provider`` records what
the session really got (``serving.bundle.sessions.make_session``): on a machine without a usable GPU the
session falls back to the CPU.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.ranker import FeatureSpec, ItemTable, build_batch, combine_heads
from serving.bundle.contract import ITEMS, RANKER_JSON, RANKER_ONNX, BundleError
from serving.bundle.sessions import make_session
from serving.bundle.tables import read_embeddings, read_items_frame

log = logging.getLogger(__name__)


@dataclass
class RankRequest:
    user_emb: np.ndarray  # (dim,) user / sequence embedding from encoder.onnx
    history: np.ndarray  # recent item ids, oldest first (int64)
    candidates: np.ndarray  # (n,) item ids (int64)
    retrieval_scores: np.ndarray  # (n,) float32
    hour: int = 12
    dow: int = 0
    channel: str | None = None
    user_feat: np.ndarray | None = None  # int64 codes in ranker.json ``user_features`` order; None = all unknown


class Ranker:
    """Scores (user, candidate) pairs with the bundle's ``ranker.onnx``."""

    def __init__(self, session, provider: str, spec: FeatureSpec, table: ItemTable):
        self.session = session
        self.provider = provider
        self.spec = spec
        self.table = table
        self.heads = list(spec.heads)

    @classmethod
    def load(cls, bundle_dir: Path, prefer_cuda: bool = True, threads: int | None = None, *,
             items: pd.DataFrame | None = None, embeddings: np.ndarray | None = None) -> "Ranker | None":
        """The bundle's ranker (None without ``ranker.onnx``); ``threads``: ONNX Runtime intra-op threads.
        ``items`` / ``embeddings``: the bundle's ``items.parquet`` frame and item embeddings when the caller
        has read them already (else they are read here)."""
        bundle_dir = Path(bundle_dir)
        onnx_path, json_path = bundle_dir / RANKER_ONNX, bundle_dir / RANKER_JSON
        if not onnx_path.exists():
            return None
        if not json_path.exists():
            raise BundleError(f"{json_path}: missing although {RANKER_ONNX} is present")
        try:
            spec = FeatureSpec.from_json(json.loads(json_path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise BundleError(f"{json_path}: not a valid ranker feature spec ({e})") from e
        emb = read_embeddings(bundle_dir) if embeddings is None else embeddings
        if emb.shape[1] != spec.dim:
            raise BundleError(f"{json_path}: dim={spec.dim} differs from item_embeddings.npy dimension {emb.shape[1]}")
        table = ItemTable.build(read_items_frame(bundle_dir / ITEMS) if items is None else items, emb, spec)
        session, provider = make_session(onnx_path, prefer_cuda, threads)
        log.info("ranker loaded from %s on %s", bundle_dir, provider)
        return cls(session, provider, spec, table)

    def head_probs(self, requests: list[RankRequest]) -> list[np.ndarray]:
        """Per request, the (n, n_heads) head probabilities."""
        batch = build_batch(self.table, self.spec, requests)
        if batch.dense.shape[0] == 0:
            return [np.zeros((0, len(self.heads)), np.float32) for _ in requests]
        (probs,) = self.session.run([self.spec.onnx_output], batch.as_onnx_feed())
        return [probs[a:b] for a, b in zip(batch.offsets[:-1], batch.offsets[1:])]

    def score(self, requests: list[RankRequest]) -> list[np.ndarray]:
        """One float32 score array per request (higher = better), from one batched ONNX Runtime call."""
        return [combine_heads(p, self.spec) for p in self.head_probs(requests)]
