"""Reliability checks of the running service (loopback; bounded in requests and time):

1. fuzzing: schemathesis generates valid and invalid requests for every operation of /openapi.json
   (``serve.reliability.fuzz_examples`` per operation and mode) and runs all its checks on each answer
   (no 5xx, documented status codes and schemas, invalid data refused, valid data accepted, ...);
2. hot swap: an open-loop load (``rps`` for ``seconds``) on /v1/recommendations while ``LATEST`` flips
   between two bundles every ``swap_every_s``; no request may fail, and both bundles must answer;
3. replica kill: the same load on an app with ``replicas`` ingress replicas; one is killed
   (``ray.kill``) after ``kill_after_s``; at most 0.1 % of requests may fail.

    python scripts/check_serve_reliability.py [hydra overrides, e.g. serve.reliability.seconds=10]

Prints a table, then (last line) one JSON object with the counts; exit code 1 when a check fails.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
KEY, ADMIN = "reliability-key", "reliability-admin"
os.environ["SHOPREC_API_KEYS"] = KEY
os.environ["SHOPREC_ADMIN_KEYS"] = ADMIN
os.environ.setdefault("SHOPREC_PSEUDO_KEY", "reliability-pseudonymisation-key")

from _loadgen import open_loop  # noqa: E402 - scripts/ is on sys.path when a script in it runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fuzz(url: str, examples: int) -> dict:
    """schemathesis against the live /openapi.json: status counts; every answer < 500."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    all_checks = CHECKS.get_all()
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    codes: collections.Counter = collections.Counter()
    server_errors, check_failures = [], []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:  # the one rule JSON Schema cannot state: price_min <= price_max
                strategy = strategy.filter(lambda c: not _price_range_violated(c))

            @given(case=strategy)
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                      derandomize=True)
            def one(case):
                headers = {"X-API-Key": KEY if case.operation.path != "/admin/reload" else ADMIN}
                r = case.call(base_url=url, headers=headers, timeout=30)
                codes[r.status_code] += 1
                if r.status_code >= 500:
                    server_errors.append(f"{op.label} -> {r.status_code}: {r.text[:200]}")
                try:
                    case.validate_response(r, checks=all_checks, headers=headers)
                except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - counted and reported
                    check_failures.append(f"{op.label}: {str(e)[:300]}")

            try:
                one()
            except hypothesis.errors.Unsatisfiable:  # e.g. no invalid input exists for GET /healthz
                pass
    return {"fuzz_requests": sum(codes.values()), "fuzz_5xx": sum(v for k, v in codes.items() if k >= 500),
            "fuzz_status_counts": {str(k): v for k, v in sorted(codes.items())}, "fuzz_5xx_examples": server_errors[:5],
            "fuzz_checks": len(all_checks), "fuzz_check_failures": len(check_failures),
            "fuzz_check_failure_examples": check_failures[:5]}


def _price_range_violated(case) -> bool:
    ctx = case.body.get("context") if isinstance(case.body, dict) else None
    lo, hi = (ctx.get("price_min"), ctx.get("price_max")) if isinstance(ctx, dict) else (None, None)
    return isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi


def body(i: int) -> dict:
    from training.synthetic_bundle import raw_user_id

    return {"user_id": raw_user_id(i % 500) if i % 10 else f"new-{i}", "k": 10}


def swap_check(url: str, bundles: Path, r) -> dict:
    from serving.bundle import set_latest

    flips = []

    async def flipper():
        names = ["b2", "b1"]
        t_end = time.monotonic() + float(r.seconds) - 1
        i = 0
        while time.monotonic() + float(r.swap_every_s) < t_end:
            await asyncio.sleep(float(r.swap_every_s))
            set_latest(bundles, names[i % 2])  # atomic, as every publisher does
            flips.append(names[i % 2])
            i += 1

    res = asyncio.run(open_loop(url + "/v1/recommendations", body, rps=float(r.rps), seconds=float(r.seconds),
                                headers={"X-API-Key": KEY}, keep_bodies=True, during=flipper,
                                timeout=float(r.timeout_s)))
    seen = collections.Counter(b["bundle"] for b in res.bodies)
    return {"swap_requests": res.n, "swap_failed": res.failed, "swap_flips": len(flips),
            "swap_bundles_answering": dict(seen), "swap_status": dict(res.statuses),
            "swap_exceptions": dict(res.exceptions), "swap_p50_ms": res.summary()["p50_ms"],
            "swap_p99_ms": res.summary()["p99_ms"], "swap_max_ms": max(res.latencies_ms, default=float("nan")),
            "swap_latency_by_second": latency_by_second(res),
            "swap_client_cpu_ms_per_request": 1000 * res.client_cpu_s / max(res.n, 1)}


def latency_by_second(res) -> list[list[float]]:
    """[second, requests started, p50 ms, max ms] per second of the load (requests started in it)."""
    import numpy as np

    by: dict[int, list[float]] = collections.defaultdict(list)
    for t, ms in zip(res.starts, res.latencies_ms):
        by[int(t)].append(ms)
    return [[s, len(v), round(float(np.median(v)), 1), round(max(v), 1)] for s, v in sorted(by.items())]


def kill_check(url: str, r, app_name: str) -> dict:
    import ray

    killed = []

    async def killer():
        await asyncio.sleep(float(r.kill_after_s))
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"SERVE_REPLICA::{app_name}#ingress")]
        if names:
            ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
            killed.append(names[0]["name"])

    res = asyncio.run(open_loop(url + "/v1/recommendations", body, rps=float(r.rps), seconds=float(r.seconds),
                                headers={"X-API-Key": KEY}, during=killer, timeout=float(r.timeout_s)))
    return {"kill_requests": res.n, "kill_failed": res.failed, "kill_failed_pct": 100.0 * res.failed / max(res.n, 1),
            "kill_replicas_killed": len(killed), "kill_status": dict(res.statuses),
            "kill_exceptions": dict(res.exceptions), "kill_p99_ms": res.summary()["p99_ms"]}


def main(argv: list[str]) -> dict:
    from serving.app import compose_config
    from serving.bundle import set_latest
    from serving.run import start, stop
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle

    r = compose_config(argv).serve.reliability
    artifacts = Path(tempfile.mkdtemp(prefix="serve_reliability_"))
    bundles = artifacts / "bundles"
    uf = bool(r.user_features)
    build_synthetic_bundle(bundles / "b2", SyntheticBundleSpec(n_items=int(r.n_items), seed=1, user_features=uf),
                           write_latest=False)
    build_synthetic_bundle(bundles / "b1", SyntheticBundleSpec(n_items=int(r.n_items), seed=0, user_features=uf))
    cfg = compose_config([*argv, f"paths.artifacts={artifacts}", f"serve.port={free_port()}",
                          "serve.watch_interval_s=0.5", f"serve.ingress.num_replicas={int(r.replicas)}",
                          f"serve.ingress.num_cpus={0.9 / int(r.replicas):.3f}",
                          f"serve.auth.rate_limit_per_s={10 * float(r.rps)}", f"serve.auth.burst={10 * float(r.rps)}"])
    started = start(cfg)
    out: dict = {"n_items": int(r.n_items), "user_features": uf, "rps": float(r.rps), "seconds": float(r.seconds),
                 "ingress_replicas": int(r.replicas)}
    checks = [str(c) for c in r.checks]
    unknown = sorted(set(checks) - {"fuzz", "swap", "kill"})
    if unknown:
        raise SystemExit(f"serve.reliability.checks: unknown check(s) {unknown}; expected fuzz, swap, kill")
    checks = []
    try:
        if "fuzz" in checks:
            out.update(fuzz(started.url, int(r.fuzz_examples)))
            checks.append(out["fuzz_5xx"] == 0 and out["fuzz_check_failures"] == 0 and out["fuzz_requests"] >= 1000)
        if "swap" in checks:
            set_latest(bundles, "b1")
            time.sleep(2)
            out.update(swap_check(started.url, bundles, r))
            checks.append(out["swap_failed"] == 0 and len(out["swap_bundles_answering"]) == 2)
        if "kill" in checks:
            out.update(kill_check(started.url, r, str(cfg.serve.app_name)))
            checks.append(out["kill_failed_pct"] <= 0.1 and out["kill_replicas_killed"] == 1)
    finally:
        stop()
    out["checks"] = checks
    out["ok"] = bool(checks) and all(checks)
    print(f"\ncheck_serve_reliability: {int(r.n_items)} items{' with user features' if uf else ''}, "
          f"{int(r.replicas)} ingress replicas, "
          f"{float(r.rps):.0f} rps for {float(r.seconds):.0f} s")
    if "fuzz" in checks:
        print(f"fuzz      {out['fuzz_requests']:>6} requests  {out['fuzz_5xx']} answers >= 500  "
              f"{out['fuzz_check_failures']} failed checks (of {out['fuzz_checks']})  {out['fuzz_status_counts']}")
    if "swap" in checks:
        print(f"hot swap  {out['swap_requests']:>6} requests  {out['swap_failed']} failed  {out['swap_flips']} flips  "
              f"answered by {out['swap_bundles_answering']}  p50 {out['swap_p50_ms']:.1f} ms  "
              f"p99 {out['swap_p99_ms']:.1f} ms  max {out['swap_max_ms']:.1f} ms  "
              f"(load generator {out['swap_client_cpu_ms_per_request']:.2f} ms CPU per request)")
    if "kill" in checks:
        print(f"kill      {out['kill_requests']:>6} requests  {out['kill_failed']} failed "
              f"({out['kill_failed_pct']:.3f} %)  replicas killed {out['kill_replicas_killed']}  "
              f"p99 {out['kill_p99_ms']:.1f} ms")
    print("all checks passed" if out["ok"] else "CHECK FAILED")
    return out


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)
