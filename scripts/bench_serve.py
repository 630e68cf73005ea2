"""Latency and throughput of POST /v1/recommendations on a 100k-item synthetic catalogue, side by side
with a no-op route behind the same FastAPI ingress (same proxy, auth and middleware), same run.

The baseline is "a no-op deployment behind the same FastAPI ingress", after the stack's measurements (a no-op deployment ~6 ms, "the same behind a FastAPI ingress" ~10 ms, an
ingress calling no-op deployments through handles ~10 ms more per hop). That is a FastAPI ingress
whose route does nothing, with no handle hop: here ``/v1/noop`` on the very same ingress replica,
behind the same key check and middleware, sent the same request bodies (it does not parse them).
Reaching the no-op through a handle from the ingress would add a ~5 ms hop to the baseline only and
flatter the ratio; it is not used.

Besides the client-side latencies the table shows the mean time spent inside the app (the
``shoprec_request_seconds`` histogram of the replica, scraped before and after each run), so the
proxy / Ray transport share and the app's own share can be told apart.

    python scripts/bench_serve.py [hydra overrides, e.g. serve.bench.requests=200]

Loopback only; bounded by ``serve.bench.requests`` and ``serve.bench.max_seconds`` per endpoint,
concurrency level and round. Prints a table, then (last line) one JSON object: per concurrency the
p50/p99/throughput of both routes and ``ratio_p50`` (recommendations p50 / no-op p50).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
KEY = "bench-key"
os.environ["SHOPREC_API_KEYS"] = KEY
os.environ.setdefault("SHOPREC_PSEUDO_KEY", "bench-pseudonymisation-key")

from _loadgen import closed_loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inprocess(bundle_dir: Path, artifacts: Path, cfg, users: list[str], n: int) -> dict[str, float]:
    """The pipeline without HTTP (same settings): median ms of the whole and of each stage."""
    from serving.bundle import load_bundle
    from serving.recommender import RecommendSettings, Recommender, RecQuery
    from serving.store import EventStore

    rec = Recommender(load_bundle(bundle_dir, onnx_threads=int(cfg.serve.ingress.onnx_threads)), EventStore(artifacts / "inproc_events.csv"),
                      RecommendSettings.from_cfg(cfg.serve))
    stages: dict[str, list[float]] = {"retrieve": [], "rank": [], "rules": []}
    total = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        rec.recommend(RecQuery(user_key=users[i % len(users)], k=int(cfg.serve.bench.k)),
                          observe=lambda s, sec: stages.setdefault(s, []).append(sec * 1000) if i >= 20 else None)
        if i >= 20:
            total.append((time.perf_counter() - t0) * 1000)
    out = {"inprocess_p50_ms": float(np.median(total))}
    out.update({f"inprocess_{s}_p50_ms": float(np.median(v)) for s, v in stages.items() if v})
    return out


def scrape(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the replica's request-latency histogram per route and stage-latency per stage."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("shoprec_request_seconds", "shoprec_stage_seconds"):
            continue
        for smp in fam.samples:
            label = smp.labels.get("route") or f"stage:{smp.labels.get('stage')}"
            if smp.name.endswith("_sum"):
                out.setdefault(label, [0.0, 0.0])[0] += smp.value
            elif smp.name.endswith("_count"):
                out.setdefault(label, [0.0, 0.0])[1] += smp.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def in_app_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per route / stage between two scrapes."""
    out = {}
    for k, (s1, c1) in after.items():
        s0, c0 = before.get(k, (0.0, 0.0))
        if c1 > c0:
            out[k] = 1000 * (s1 - s0) / (c1 - c0)
    return out


def main(argv: list[str]) -> dict:
    from features.privacy import pseudonymise_one
    from serving.app import compose_config
    from serving.run import start, stop
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle, raw_user_id

    base = compose_config(argv)
    b = base.serve.bench
    artifacts = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    t0 = time.perf_counter()
    bundle_dir = build_synthetic_bundle(artifacts / "bundles" / "bench", SyntheticBundleSpec(
        n_items=int(b.n_items), dim=int(b.dim), n_users=int(b.n_users), n_categories=50, seed=0))
    build_s = time.perf_counter() - t0
    if b.index:  # an ANN index inside the bundle (serving.build_index), instead of exact search
        from serving.build_index import run as build_index

        build_index(compose_config([*argv, f"index={b.index}", f"bundle={bundle_dir}", "index.recall_queries=200"]))
    cfg = compose_config([*argv, f"paths.artifacts={artifacts}", f"serve.port={free_port()}",
                          "serve.http.debug_routes=true", "serve.watch_interval_s=0"])
    rng = np.random.default_rng(0)
    n_users = int(b.n_users)

    def body(i: int) -> dict:
        cold = rng.random() < float(b.cold_frac)
        uid = f"bench-new-{i}" if cold else raw_user_id(int(rng.integers(0, n_users)))
        return {"user_id": uid, "k": int(b.k)}

    started = start(cfg)
    rows = []
    try:
        for c in [int(x) for x in b.concurrency]:
            per = {"noop": [], "recommendations": []}
            inapp: dict[str, list[dict]] = {"noop": [], "recommendations": []}
            for _ in range(int(b.rounds)):
                for name, path in (("noop", "/v1/noop"), ("recommendations", "/v1/recommendations")):
                    before = scrape(started.url)
                    res = asyncio.run(closed_loop(started.url + path, body, concurrency=c, n_requests=int(b.requests),
                                                  max_seconds=float(b.max_seconds), headers={"X-API-Key": KEY},
                                                  warmup=int(b.warmup)))
                    per[name].append(res)
                    inapp[name].append(in_app_means(before, scrape(started.url)))
            row = {"concurrency": c}
            for name, path in (("noop", "/v1/noop"), ("recommendations", "/v1/recommendations")):
                vals = [m[path] for m in inapp[name] if path in m]
                row[f"{name}_in_app_mean_ms"] = float(np.mean(vals)) if vals else float("nan")
            for stage in ("retrieve", "rank", "rules"):
                vals = [m[f"stage:{stage}"] for m in inapp["recommendations"] if f"stage:{stage}" in m]
                row[f"in_app_{stage}_mean_ms"] = float(np.mean(vals)) if vals else float("nan")
            for name, results in per.items():
                lat = np.concatenate([r.latencies_ms for r in results])
                n = sum(r.n for r in results)
                row[f"{name}_p50_ms"] = float(np.median(lat))
                row[f"{name}_p99_ms"] = float(np.percentile(lat, 99))
                row[f"{name}_rps"] = n / sum(r.seconds for r in results)
                row[f"{name}_failed"] = sum(r.failed for r in results)
                row[f"{name}_n"] = n
            row["ratio_p50"] = row["recommendations_p50_ms"] / row["noop_p50_ms"]
            rows.append(row)
    finally:
        stop()
    users = [pseudonymise_one(raw_user_id(u)) for u in range(n_users)]
    inproc = inprocess(bundle_dir, artifacts, cfg, users, int(b.inprocess_requests))

    print(f"\nbench_serve: {int(b.n_items):,} items, dim {int(b.dim)}, index {b.index or 'exact (torch)'}, "
          f"ranker {cfg.serve.ranker.mode}, "
          f"ingress replicas {cfg.serve.ingress.num_replicas}, {os.cpu_count()} CPUs, bundle built in {build_s:.1f} s")
    print(f"{'conc':>4} | {'no-op p50':>9} {'p99':>7} {'rps':>6} | {'recs p50':>9} {'p99':>7} {'rps':>6} | "
          f"{'ratio p50':>9} | failed | in-app mean ms: no-op, recs (retrieve/rank/rules)")
    for r in rows:
        print(f"{r['concurrency']:>4} | {r['noop_p50_ms']:>9.2f} {r['noop_p99_ms']:>7.2f} {r['noop_rps']:>6.0f} | "
              f"{r['recommendations_p50_ms']:>9.2f} {r['recommendations_p99_ms']:>7.2f} "
              f"{r['recommendations_rps']:>6.0f} | {r['ratio_p50']:>9.2f} | "
              f"{r['noop_failed']}/{r['recommendations_failed']:<4} | {r['noop_in_app_mean_ms']:.2f}, "
              f"{r['recommendations_in_app_mean_ms']:.2f} ({r['in_app_retrieve_mean_ms']:.2f}/"
              f"{r['in_app_rank_mean_ms']:.2f}/{r['in_app_rules_mean_ms']:.2f})")
    print("in-process pipeline (no HTTP), median ms: " + ", ".join(f"{k.removeprefix('inprocess_')}={v:.2f}"
                                                                  for k, v in inproc.items()))
    out = {"n_items": int(b.n_items), "dim": int(b.dim), "index": b.index or "exact", "ranker": str(cfg.serve.ranker.mode),
           "cpus": os.cpu_count(), "rows": rows, **inproc}
    for r in rows:
        suffix = "" if r["concurrency"] == 1 else f"_c{r['concurrency']}"
        out[f"ratio_p50{suffix}"] = r["ratio_p50"]
    return out


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result))
