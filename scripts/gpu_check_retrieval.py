"""GPU check of the retrieval and ranking paths (runs on the CPU too, where it checks the fallbacks).

- torch exact index: CUDA fp16 (and bf16) top-100 vs CPU fp32 on the same embeddings (recall@100, the
  score error) and latency at batch 1 / 32 / 1024 for 100k and 1M items (medians);
- filters on the GPU backend (exclude + allowed) return only allowed, non-excluded items;
- the DCN-v2 ranker: CUDA forward vs CPU forward (max abs difference);
- ONNX Runtime: which provider a session really gets (``session.get_providers()``).

    python scripts/gpu_check_retrieval.py [--sizes 100000,1000000]

Needs torch, numpy, pandas, onnxruntime (not faiss, not hydra). Last stdout line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

from models.ranker import DCNv2Ranker
from serving.index import TorchExactIndex


def timed_ms(fn, repeats: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rng = np.random.default_rng(0)
    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "sizes": {}}
    for n in [int(s) for s in a.sizes.split(",")]:
        centres = rng.normal(size=(200, a.dim)).astype(np.float32)
        emb = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, a.dim)).astype(np.float32)
        q = (centres[rng.integers(0, 200, 1024)] + 0.5 * rng.normal(size=(1024, a.dim))).astype(np.float32)
        ref = TorchExactIndex(emb, device="cpu", dtype="float32")
        ref_s, ref_i = ref.search(q[:256], 100)
        row = {}
        for dtype in (["float16", "bfloat16"] if cuda else ["float32"]):
            idx = TorchExactIndex(emb, device=device, dtype=dtype)
            s, i = idx.search(q[:256], 100)
            row[dtype] = {
                "recall_at_100_vs_cpu_fp32": float(np.mean([len(set(x) & set(y)) / 100 for x, y in zip(i, ref_i)])),
                "max_abs_score_err": float(np.abs(s[:, 0] - ref_s[:, 0]).max()),
                **{f"ms_b{b}": round(timed_ms(lambda b=b: idx.search(q[:b], 100), a.repeats), 3) for b in (1, 32, 1024)},
            }
        allowed = rng.random(n) < 0.1
        exclude = [set(ref_i[j, :20].tolist()) for j in range(8)]
        _, fi = TorchExactIndex(emb, device=device).search(q[:8], 100, exclude=exclude, allowed=allowed)
        row["filters_ok"] = bool(all(allowed[fi[j][fi[j] >= 0]].all() and not (set(fi[j].tolist()) & exclude[j]) for j in range(8)))
        res["sizes"][str(n)] = row
        print(n, json.dumps(row), flush=True)

    torch.manual_seed(0)
    net = DCNv2Ranker(15, [10, 12, 24, 7, 3], a.dim, 2).eval()
    N = 4096
    x = (torch.randn(N, 15), torch.randint(0, 3, (N, 5)), torch.randn(N, a.dim), torch.randn(N, a.dim))
    net_dev = DCNv2Ranker(15, [10, 12, 24, 7, 3], a.dim, 2).eval()
    net_dev.load_state_dict(net.state_dict())
    net_dev = net_dev.to(device)
    xd = tuple(t.to(device) for t in x)
    with torch.no_grad():
        cpu = net(*x)
        gpu = net_dev(*xd).cpu()
        res["ranker_ms_4096_rows"] = round(timed_ms(lambda: net_dev(*xd), a.repeats), 3)
    res["ranker_cuda_vs_cpu_max_abs_diff"] = float((cpu - gpu).abs().max())

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.onnx"
        torch.onnx.export(net.cpu(), tuple(t[:8] for t in x), str(path), input_names=["dense", "cat", "user_emb", "item_emb"],
                          output_names=["probs"], dynamo=False, opset_version=17,
                          dynamic_axes={k: {0: "n"} for k in ("dense", "cat", "user_emb", "item_emb", "probs")})
        from serving.bundle.sessions import make_session

        sess, provider = make_session(path)
        got = sess.run(["probs"], {k: t.numpy() for k, t in zip(["dense", "cat", "user_emb", "item_emb"], x)})[0]
        res["onnx_available_providers"] = ort.get_available_providers()
        res["onnx_session_provider"] = provider
        res["onnx_vs_torch_max_abs_diff"] = float(np.abs(got - cpu.numpy()).max())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
