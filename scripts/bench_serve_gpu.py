"""The recommendation path in-process (no Ray, no HTTP) on a large synthetic catalogue, for the GPU
machine: encoder (ONNX Runtime) -> exact retrieval with torch on CUDA (fp16) -> ranker (ONNX Runtime)
-> rules, one request at a time, plus batched retrieval alone.

    python scripts/bench_serve_gpu.py [--n-items 1000000] [--requests 2000]

The device machine has no Ray and no Hydra (../shared/STACK.md), so this script measures the
retrieval + ranking path in-process and takes plain arguments; it falls back to the CPU without CUDA.
Prints a table, then (last line) one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SHOPREC_PSEUDO_KEY", "bench-pseudonymisation-key")


def pct(v, q):
    return float(np.percentile(np.asarray(v), q))


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--n-items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-users", type=int, default=5000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args()

    import torch

    from features.privacy import pseudonymise_one
    from serving.bundle import load_bundle
    from serving.recommender import RecommendSettings, Recommender, RecQuery
    from serving.store import EventStore
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle, raw_user_id

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench_serve_gpu_"))
    t0 = time.perf_counter()
    bdir = build_synthetic_bundle(work / "bundles" / "big", SyntheticBundleSpec(
        n_items=a.n_items, dim=a.dim, n_users=a.n_users, n_categories=200, seed=0))
    build_s = time.perf_counter() - t0
    bundle = load_bundle(bdir)  # no index/ in the bundle: exact torch search, on CUDA when present (no FAISS needed)
    assert bundle.index.backend == "torch_exact" and bundle.index.device == device
    big = {"retrieve": 1e9, "rank": 1e9, "rules": 1e9}
    rec = Recommender(bundle, EventStore(work / "events.csv", fsync=False),
                      RecommendSettings(n_candidates=a.candidates, popular_candidates=20, budget_ms=big))
    users = [pseudonymise_one(raw_user_id(u)) for u in range(a.n_users)]
    stages: dict[str, list[float]] = {}
    total = []
    for i in range(a.requests + 50):
        t = time.perf_counter()
        rec.recommend(RecQuery(users[i % len(users)], a.k),
                      observe=(lambda s, sec: stages.setdefault(s, []).append(sec * 1000)) if i >= 50 else None)
        if i >= 50:
            total.append((time.perf_counter() - t) * 1000)
    q = np.random.default_rng(0).normal(size=(a.batch, a.dim)).astype(np.float32)
    bundle.index.search(q, a.candidates)
    if device == "cuda":
        torch.cuda.synchronize()
    bt = []
    for _ in range(50):
        t = time.perf_counter()
        bundle.index.search(q, a.candidates)
        bt.append((time.perf_counter() - t) * 1000)
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "n_items": a.n_items, "dim": a.dim,
           "bundle_build_s": build_s, "requests": a.requests, "p50_ms": pct(total, 50), "p99_ms": pct(total, 99),
           "sequential_rps_one_process": 1000.0 / float(np.mean(total)),
           **{f"{s}_p50_ms": pct(v, 50) for s, v in stages.items()},
           **{f"{s}_p99_ms": pct(v, 99) for s, v in stages.items()},
           "batched_retrieval_batch": a.batch, "batched_retrieval_p50_ms": pct(bt, 50),
           "batched_retrieval_queries_per_s": a.batch * 1000.0 / pct(bt, 50)}
    print(f"\nin-process path, {a.n_items:,} items, dim {a.dim}, {out['device']}; one request at a time")
    print(f"{'stage':>10} | {'p50 ms':>7} | {'p99 ms':>7}")
    for s in ("retrieve", "rank", "rules"):
        if s in stages:
            print(f"{s:>10} | {out[s + '_p50_ms']:>7.2f} | {out[s + '_p99_ms']:>7.2f}")
    print(f"{'total':>10} | {out['p50_ms']:>7.2f} | {out['p99_ms']:>7.2f}   ({out['sequential_rps_one_process']:.0f} rps in one process)")
    print(f"batched retrieval: {a.batch} queries in {out['batched_retrieval_p50_ms']:.2f} ms "
          f"({out['batched_retrieval_queries_per_s']:.0f} queries/s)")
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
