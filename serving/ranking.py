"""The ranker at serving time: one ONNX Runtime session over ``<bundle>/ranker.onnx``.

``Ranker.load(bundle)`` returns ``None`` when the bundle has no ranker (the service then keeps the
retrieval order); ``serving.bundle.load_bundle`` hands it the item table and embeddings it has already
read, so no bundle file is read twice. ``Ranker.score(requests)`` builds the features of every request with the same
code as training (``models.ranker.build_batch``), runs one batched ONNX Runtime call and returns
one float32 score array per request (higher = better).

Where it runs follows ``serving.accelerators.ranker_plan``: ONNX Runtime's CUDA provider when offered; else,
on a CUDA machine, the same weights through torch (``ranker_torch.pt``); else ONNX Runtime on the CPU.
``placement`` says which, and why; ``provider`` is what the session really got.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from models.ranker import DCNv2Ranker, FeatureSpec, ItemTable, build_batch, combine_heads
from serving.accelerators import Placement, gpu_facts, ranker_plan
from serving.bundle.contract import ITEMS, RANKER_JSON, RANKER_ONNX, RANKER_TORCH, BundleError
from serving.bundle.sessions import TorchSession, make_session
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

    def __init__(self, session, provider: str, spec: FeatureSpec, table: ItemTable, placement: Placement | None = None):
        self.session = session
        self.provider = provider
        self.placement = placement or Placement("ranker", "cpu", "onnxruntime")
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
        torch_path = bundle_dir / RANKER_TORCH
        facts = gpu_facts()
        plan = ranker_plan(torch_path.exists(), facts, prefer_cuda)
        session = provider = None
        if plan.backend == "onnxruntime":
            session, provider = make_session(onnx_path, prefer_cuda, threads)
            if plan.device == "cuda" and provider != "CUDAExecutionProvider":  # ORT listed CUDA but could not use it
                plan = ranker_plan(torch_path.exists(), replace(facts, ort_cuda=False), prefer_cuda)
                if plan.backend == "onnxruntime":
                    plan = Placement("ranker", "cpu", "onnxruntime", "ONNX Runtime offered CUDA but the session fell "
                                                                     "back to the CPU (driver or library mismatch)")
        if plan.backend == "torch":
            session, provider = TorchSession(load_torch_ranker(torch_path), list(spec.onnx_inputs), spec.onnx_output,
                                             plan.device), f"torch-{plan.device}"
        log.info("ranker loaded from %s on %s", bundle_dir, provider)
        return cls(session, provider, spec, table, plan)

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


def load_torch_ranker(path: Path) -> DCNv2Ranker:
    """The ranker's torch module from ``ranker_torch.pt`` (``{"init": constructor kwargs, "state_dict": ...}``,
    written by ``training.ranker.export_onnx``); ``BundleError`` naming the file when it does not load."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = DCNv2Ranker(**blob["init"])
        net.load_state_dict(blob["state_dict"])
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BundleError(f"{path}: not a ranker's torch weights ({type(e).__name__}: {str(e)[:200]})") from e
    return net.eval()
