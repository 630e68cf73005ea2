"""ONNX Runtime sessions over a bundle's ``.onnx`` files (``encoder.onnx``, ``ranker.onnx``).

One place decides the session options of every serving session: a set number of intra-op threads, one
inter-op thread, no spinning (ORT's pool threads otherwise spin after every run, burning the cores that
the HTTP proxy and the other replicas need), and the CUDA execution provider when ONNX Runtime offers
it. ``make_session`` reports the provider the session really got (``session.get_providers()``): on a
machine without a usable GPU the session falls back to the CPU. ``TorchSession`` gives a torch module the same
``run`` interface, for a model that runs on CUDA through torch where ONNX Runtime has no CUDA provider.
"""
from __future__ import annotations

from pathlib import Path

from serving.bundle.contract import BundleError


def session_options(threads: int | None):
    """ONNX Runtime options: ``threads`` intra-op threads (None = ORT's default, one per physical core),
    one inter-op thread, no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"onnx_threads={threads}: must be >= 1")
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def make_session(path: str | Path, prefer_cuda: bool = True, threads: int | None = None):
    """(session over ``path``, the provider it really got: ``CUDAExecutionProvider`` or ``CPUExecutionProvider``).
    A file ONNX Runtime cannot load raises ``BundleError`` naming it."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if prefer_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise BundleError(f"{path}: cannot be loaded by ONNX Runtime ({type(e).__name__}: {str(e)[:200]})") from e
    got = sess.get_providers()
    return sess, ("CUDAExecutionProvider" if "CUDAExecutionProvider" in got else "CPUExecutionProvider")


class TorchSession:
    """ONNX Runtime's ``run(output_names, feed)`` over a torch module on ``device``: inputs are fed in
    ``input_names`` order, the one output comes back as a float32 numpy array."""

    def __init__(self, module, input_names: list[str], output_name: str, device: str):
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.input_names = list(input_names)
        self.output_name = output_name

    def run(self, output_names, feed):
        import torch

        if list(output_names) != [self.output_name]:
            raise ValueError(f"output_names={list(output_names)}: this session has only {self.output_name!r}")
        args = [torch.from_numpy(feed[n]).to(self.device, non_blocking=True) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        return [out.float().cpu().numpy()]
