"""Where each serving component runs, GPU or CPU, and why: decided once per bundle load, logged, shown in ``/readyz``.

A component never drops to the CPU silently. The rules, in order of preference:

- **encoder** (``encoder.onnx``): ONNX Runtime's CUDA provider when the session gets it; else ONNX Runtime on
  the CPU (the bundle holds no other copy of the encoder).
- **retrieval**: FAISS on the GPU when the installed FAISS has a GPU build and sees a GPU; else, when torch
  sees CUDA, torch's exact search on CUDA over the bundle's item embeddings (the FAISS index is not used: exact
  search on one GPU is faster than FAISS on the CPU up to ~10M items, see ``docs/index_benchmark.md``); else
  the bundle's index on the CPU.
- **ranker** (``ranker.onnx``): ONNX Runtime's CUDA provider (when it really gets the GPU); else, when torch sees CUDA and the bundle has
  ``ranker_torch.pt`` (the same weights, written beside the ONNX file at export), torch on CUDA; else ONNX
  Runtime on the CPU.

``gpu_facts()`` probes the machine once per process; ``Placement`` is what one component got, with the reason
whenever it is not the first choice. ``serve.use_gpu=false`` (the ``use_gpu`` arguments) keeps everything on the
CPU, stated as such.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuFacts:
    """What this process can use: torch's CUDA devices, FAISS's GPUs, ONNX Runtime's CUDA provider."""

    torch_cuda: bool
    torch_device: str        # e.g. "NVIDIA H200", "" without CUDA
    faiss_gpus: int
    ort_cuda: bool           # CUDAExecutionProvider among ONNX Runtime's available providers

    def summary(self) -> str:
        return (f"torch CUDA: {self.torch_device or 'none'}; FAISS GPUs: {self.faiss_gpus}; "
                f"ONNX Runtime CUDA provider: {'yes' if self.ort_cuda else 'no'}")


@functools.lru_cache(maxsize=1)
def gpu_facts() -> GpuFacts:
    """Probe once per process (cheap: no CUDA context is created when there is no GPU)."""
    import onnxruntime as ort
    import torch

    from serving.index.gpu import faiss_gpu_count

    cuda = bool(torch.cuda.is_available())
    return GpuFacts(torch_cuda=cuda, torch_device=torch.cuda.get_device_name(0) if cuda else "",
                    faiss_gpus=faiss_gpu_count(), ort_cuda="CUDAExecutionProvider" in ort.get_available_providers())


@dataclass(frozen=True)
class Placement:
    """Where one component runs: ``device`` cuda|cpu, ``backend`` (faiss, torch_exact, onnxruntime, torch) and
    ``reason``: why, whenever this is not the component's first choice (empty otherwise)."""

    component: str
    device: str
    backend: str
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def retrieval_plan(index_backend: str, facts: GpuFacts, use_gpu: bool = True) -> Placement:
    """Where retrieval runs for an index saved with ``index_backend`` (``faiss`` or ``torch_exact``)."""
    if not use_gpu:
        return Placement("retrieval", "cpu", index_backend, "use_gpu=false")
    if index_backend == "torch_exact":
        if facts.torch_cuda:
            return Placement("retrieval", "cuda", "torch_exact")
        return Placement("retrieval", "cpu", "torch_exact", "torch sees no CUDA device")
    if facts.faiss_gpus > 0:
        return Placement("retrieval", "cuda", "faiss")
    if facts.torch_cuda:
        return Placement("retrieval", "cuda", "torch_exact",
                         "the installed FAISS has no GPU build: exact search with torch on CUDA instead of the "
                         "bundle's FAISS index")
    return Placement("retrieval", "cpu", "faiss", "no CUDA device")


def ranker_plan(has_torch_copy: bool, facts: GpuFacts, use_gpu: bool = True) -> Placement:
    """Where the ranker runs (``has_torch_copy``: the bundle has ``ranker_torch.pt``)."""
    if not use_gpu:
        return Placement("ranker", "cpu", "onnxruntime", "use_gpu=false")
    if facts.ort_cuda and facts.torch_cuda:
        return Placement("ranker", "cuda", "onnxruntime")
    if facts.torch_cuda and has_torch_copy:
        return Placement("ranker", "cuda", "torch",
                         "ONNX Runtime has no CUDA provider here: the ranker's torch weights on CUDA")
    if facts.torch_cuda:
        return Placement("ranker", "cpu", "onnxruntime",
                         "ONNX Runtime has no CUDA provider here and the bundle has no ranker_torch.pt")
    return Placement("ranker", "cpu", "onnxruntime", "no CUDA device")


def encoder_placement(provider: str, facts: GpuFacts, use_gpu: bool = True) -> Placement:
    """What the encoder's ONNX Runtime session got (``provider`` from ``make_session``), with the reason."""
    if provider == "CUDAExecutionProvider":
        return Placement("encoder", "cuda", "onnxruntime")
    if not use_gpu:
        reason = "use_gpu=false"
    elif not facts.torch_cuda:
        reason = "no CUDA device"
    elif facts.ort_cuda:
        reason = "ONNX Runtime offered CUDA but the session fell back to the CPU (driver or library mismatch)"
    else:
        reason = "ONNX Runtime has no CUDA provider here (install the gpu extra: onnxruntime-gpu)"
    return Placement("encoder", "cpu", "onnxruntime", reason)


_said: set[tuple] = set()


def announce(placements: list[Placement], facts: GpuFacts) -> None:
    """Log where each component runs, once per process for each distinct set of placements."""
    key = tuple(placements)
    if key in _said:
        return
    _said.add(key)
    log.info("accelerators: %s", facts.summary())
    for p in placements:
        if p.reason and facts.torch_cuda:  # a GPU is here but this component is not on it, or not as first chosen
            log.warning("%s on %s (%s): %s", p.component, p.device, p.backend, p.reason)
        else:
            log.info("%s on %s (%s)%s", p.component, p.device, p.backend, f": {p.reason}" if p.reason else "")
