"""serving.ranking without a trained ranker: load() says None; bad ranker files name the file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_bundle import make_bundle  # noqa: E402

from serving.index import BundleError  # noqa: E402
from serving.ranking import Ranker  # noqa: E402


def test_load_returns_none_without_ranker(tmp_path):
    assert Ranker.load(make_bundle(tmp_path / "b", encoder=False)) is None


def test_ranker_without_spec_or_corrupt_names_file(tmp_path):
    b = make_bundle(tmp_path / "b", encoder=False)
    (b / "ranker.onnx").write_bytes(b"junk")
    with pytest.raises(BundleError, match="ranker.json: missing"):
        Ranker.load(b)
    (b / "ranker.json").write_text("{not json")
    with pytest.raises(BundleError, match="ranker.json: not a valid"):
        Ranker.load(b)


def test_cuda_provider_only_when_the_session_really_gets_it(tmp_path, monkeypatch):
    """ORT lists CUDA on GPU wheels even without a GPU: the provider recorded is what the session got."""
    import onnxruntime as ort
    import torch

    from serving.ranking import make_session

    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(3, 1), (torch.ones(2, 3),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    sess, provider = make_session(path)
    assert provider == ("CUDAExecutionProvider" if "CUDAExecutionProvider" in sess.get_providers() else "CPUExecutionProvider")
    assert provider in sess.get_providers()
