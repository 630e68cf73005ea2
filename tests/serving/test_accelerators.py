"""serving.accelerators: every component says where it runs and why; the GPU fallbacks are the stated ones.

No GPU here: the plans are checked for every combination of what a machine may have, and the two fallback
mechanisms (FAISS index -> torch exact search, ONNX ranker -> torch ranker) are run on the CPU and compared
with what they replace.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import serving.index.persist as persist
import serving.ranking as ranking
from models.ranker import DCNv2Ranker, FeatureSpec
from serving.accelerators import GpuFacts, Placement, encoder_placement, gpu_facts, ranker_plan, retrieval_plan
from serving.bundle import load_bundle
from serving.bundle.contract import RANKER_JSON, RANKER_ONNX, RANKER_TORCH
from serving.index import IndexManifest, IndexSettings, build_index, save_index
from serving.ranking import Ranker, RankRequest
from tests.toy_bundle import make_bundle

NOTHING = GpuFacts(torch_cuda=False, torch_device="", faiss_gpus=0, ort_cuda=False)
TORCH_ONLY = GpuFacts(torch_cuda=True, torch_device="GPU", faiss_gpus=0, ort_cuda=False)
EVERYTHING = GpuFacts(torch_cuda=True, torch_device="GPU", faiss_gpus=1, ort_cuda=True)


@pytest.mark.parametrize("facts, saved, want", [
    (EVERYTHING, "faiss", ("cuda", "faiss", False)),
    (TORCH_ONLY, "faiss", ("cuda", "torch_exact", True)),     # the stated fallback: exact search on the GPU
    (NOTHING, "faiss", ("cpu", "faiss", True)),
    (TORCH_ONLY, "torch_exact", ("cuda", "torch_exact", False)),
    (NOTHING, "torch_exact", ("cpu", "torch_exact", True)),
])
def test_retrieval_plan(facts, saved, want):
    p = retrieval_plan(saved, facts)
    assert (p.device, p.backend, bool(p.reason)) == want


@pytest.mark.parametrize("facts, has_torch, want", [
    (EVERYTHING, True, ("cuda", "onnxruntime")),
    (TORCH_ONLY, True, ("cuda", "torch")),                     # the stated fallback: torch on CUDA
    (TORCH_ONLY, False, ("cpu", "onnxruntime")),
    (NOTHING, True, ("cpu", "onnxruntime")),
])
def test_ranker_plan(facts, has_torch, want):
    p = ranker_plan(has_torch, facts)
    assert (p.device, p.backend) == want
    assert p.reason or p.device == "cuda" and p.backend == "onnxruntime"


def test_use_gpu_false_is_stated():
    for p in (retrieval_plan("faiss", EVERYTHING, use_gpu=False), ranker_plan(True, EVERYTHING, use_gpu=False),
              encoder_placement("CPUExecutionProvider", EVERYTHING, use_gpu=False)):
        assert (p.device, p.reason) == ("cpu", "use_gpu=false")


def test_encoder_placement_names_the_missing_provider():
    assert "onnxruntime-gpu" in encoder_placement("CPUExecutionProvider", TORCH_ONLY).reason
    assert "fell back" in encoder_placement("CPUExecutionProvider", EVERYTHING).reason
    # the gpu extra on a machine without a GPU: ONNX Runtime lists CUDA, torch sees none
    ort_listed_only = GpuFacts(torch_cuda=False, torch_device="", faiss_gpus=0, ort_cuda=True)
    assert encoder_placement("CPUExecutionProvider", ort_listed_only).reason == "no CUDA device"
    assert ranker_plan(True, ort_listed_only) == Placement("ranker", "cpu", "onnxruntime", "no CUDA device")
    assert encoder_placement("CUDAExecutionProvider", EVERYTHING) == Placement("encoder", "cuda", "onnxruntime")


def test_loaded_bundle_reports_every_component_with_a_reason_here(bundles_root):
    """On a CPU machine the bundle says each component runs on the CPU and why (never silently)."""
    b = load_bundle(bundles_root / "bundles" / "b1")
    devices = b.devices()
    assert set(devices) == {"encoder", "retrieval"} | ({"ranker"} if b.ranker is not None else set())
    if not gpu_facts().torch_cuda:
        for comp, d in devices.items():
            assert d["device"] == "cpu" and d["reason"], (comp, d)


def test_faiss_index_served_by_torch_exact_when_faiss_has_no_gpu(tmp_path, monkeypatch):
    """The fallback for a FAISS index on a CUDA machine without FAISS GPU: torch exact search over the same rows.
    (Run on the CPU here: the plan is forced to torch_exact with device cpu.) It finds what exact FAISS finds."""
    b = make_bundle(tmp_path / "b", n_items=300)
    emb = np.load(b / "item_embeddings.npy")
    flat = build_index(emb, IndexSettings(name="flat", backend="faiss", factory="Flat"))
    save_index(flat, b / "index", IndexManifest(
        name="flat", backend="faiss", factory="Flat", metric="inner_product", n_items=len(emb), dim=emb.shape[1],
        search_params={}, filter="overfetch", overfetch=4, device="cpu", build_seconds=0.0, recall_at_k=1.0,
        recall_k=100, recall_queries=10, recall_query_source="test", torch_dtype="auto", code_version="x"))
    q = np.random.default_rng(3).normal(size=(5, emb.shape[1])).astype(np.float32)
    want_scores, want_ids = persist.load_index(b, use_gpu=False).search(q, 10, exclude=[{1, 2}] * len(q))

    monkeypatch.setattr(persist, "retrieval_plan",
                        lambda saved, facts, use_gpu=True: Placement("retrieval", "cpu", "torch_exact", "forced"))
    idx = persist.load_index(b)
    assert idx.backend == "torch_exact" and idx.placement.reason == "forced"
    got_scores, got_ids = idx.search(q, 10, exclude=[{1, 2}] * len(q))
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)


def _ranker_bundle(tmp_path):
    b = make_bundle(tmp_path / "b", n_items=50, dim=8)
    spec = FeatureSpec(dim=8, categories=["0", "1", "2", "3", "4"], price_edges=[1.0, 2.0], channels=["web"],
                       heads=["purchase"], score_weights={"purchase": 1.0})
    torch.manual_seed(0)
    net = DCNv2Ranker(len(spec.dense_features), spec.cat_cardinalities, spec.dim, len(spec.heads)).eval()
    n = 4
    args = (torch.randn(n, len(spec.dense_features)), torch.zeros(n, len(spec.cat_cardinalities), dtype=torch.long),
            torch.randn(n, 8), torch.randn(n, 8))
    torch.onnx.export(net, args, str(b / RANKER_ONNX), input_names=list(spec.onnx_inputs),
                      output_names=[spec.onnx_output], dynamic_axes={k: {0: "n"} for k in [*spec.onnx_inputs, "probs"]},
                      dynamo=False, opset_version=17)
    (b / RANKER_JSON).write_text(json.dumps(spec.to_json()))
    torch.save({"init": net.init_kwargs, "state_dict": net.state_dict()}, b / RANKER_TORCH)
    return b


def test_torch_ranker_scores_equal_the_onnx_ranker(tmp_path, monkeypatch):
    """The ranker's torch weights (``ranker_torch.pt``) score exactly as ``ranker.onnx`` does."""
    b = _ranker_bundle(tmp_path)
    reqs = [RankRequest(user_emb=np.random.default_rng(i).normal(size=8).astype(np.float32),
                        history=np.array([1, 2, 3]), candidates=np.arange(10 * i, 10 * i + 10),
                        retrieval_scores=np.linspace(1, 0, 10).astype(np.float32)) for i in range(3)]
    onnx = Ranker.load(b, prefer_cuda=False)
    assert onnx.placement.backend == "onnxruntime"
    monkeypatch.setattr(ranking, "ranker_plan",
                        lambda has_torch, facts, use_gpu=True: Placement("ranker", "cpu", "torch", "forced"))
    via_torch = Ranker.load(b)
    assert via_torch.provider == "torch-cpu" and via_torch.placement.backend == "torch"
    for x, y in zip(onnx.score(reqs), via_torch.score(reqs)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_corrupt_torch_ranker_names_the_file(tmp_path, monkeypatch):
    b = _ranker_bundle(tmp_path)
    (b / RANKER_TORCH).write_bytes(b"junk")
    monkeypatch.setattr(ranking, "ranker_plan",
                        lambda has_torch, facts, use_gpu=True: Placement("ranker", "cpu", "torch", "forced"))
    with pytest.raises(Exception, match="ranker_torch.pt: not a ranker's torch weights"):
        Ranker.load(b)
