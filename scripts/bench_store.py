"""Event ingest and recommendations through the HTTP API with the Redis store vs the file store.

    python scripts/bench_store.py [--events 3000] [--recs 600] [--rounds 2] [--restart-seconds 6]

One process, one synthetic bundle, one local redis-server (appendonly yes, appendfsync always,
``serving.redis_local``). Each store kind gets the FastAPI app of ``serving.api`` over its own
``Service`` under uvicorn on a loopback port (one replica: the store's cost, not Ray's routing):

1. ingest: ``POST /v1/events`` (one event each) from 32 concurrent clients: accepted events/s, p50/p99;
2. recommendations: ``POST /v1/recommendations`` for users with online events, 4 concurrent
   clients, kinds alternating over ``--rounds`` rounds (more rounds: a background load that drifts
   weighs on both kinds alike): p50/p99 and the Redis/file p50 ratio;
3. Redis restarted mid-run: 8 clients post events while redis-server is killed (SIGKILL) and
   started again on the same AOF; every event answered 202 must be in Redis afterwards
   (``events_lost``), the others got 503, and 202s come back without restarting the service.

Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

KEY = "bench-store-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cfg):
    import uvicorn

    from serving.api import create_app
    from serving.service import Service

    svc = Service(cfg.serve, background=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, svc


async def run_load(url: str, bodies: list[dict], concurrency: int, *, deadline_s: float = 120) -> tuple[list, list]:
    """(status per body, latency ms per body); a body whose request raised gets status 0."""
    statuses, lat = [0] * len(bodies), [0.0] * len(bodies)
    it = iter(range(len(bodies)))
    stop_at = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=10, trust_env=False, headers={"X-API-Key": KEY}, limits=limits) as c:
        async def worker():
            for i in it:
                if time.monotonic() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    r = await c.post(url, json=bodies[i])
                    statuses[i] = r.status_code
                except httpx.HTTPError:
                    statuses[i] = 0
                lat[i] = (time.perf_counter() - t0) * 1000
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, lat


def pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--recs", type=int, default=600, help="recommendations per kind and round")
    p.add_argument("--rounds", type=int, default=2, help="recommendation rounds, the kinds alternating")
    p.add_argument("--restart-seconds", type=float, default=6.0)
    p.add_argument("--work", default="artifacts/bench_store")
    a = p.parse_args()
    os.environ["SHOPREC_API_KEYS"] = KEY
    os.environ.setdefault("SHOPREC_PSEUDO_KEY", "bench-store")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from serving.app import compose_config
    from serving.redis_local import LocalRedis
    from serving.redis_store import RedisEventStore
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle

    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    bundle = run / "bundles" / "synthetic"
    build_synthetic_bundle(bundle, SyntheticBundleSpec(seed=0), write_latest=True)
    redis = LocalRedis(run / "redis").start()
    prefix = f"bench{time.time_ns()}"
    common = [f"paths.artifacts={run}", "serve.watch_interval_s=0", "serve.auth.rate_limit_per_s=1000000",
              "serve.auth.burst=1000000", "serve.budget_ms.retrieve=2000", "serve.budget_ms.rank=2000",
              "serve.budget_ms.rules=2000"]
    cfgs = {"file": compose_config(common + [f"serve.store.event_log={run / 'events.csv'}"]),
            "redis": compose_config(common + ["serve.store.kind=redis", f"serve.store.url={redis.url}",
                                              f"serve.store.redis.key_prefix={prefix}"])}
    apps = {k: start_app(c) for k, c in cfgs.items()}
    item_keys = list(apps["file"][2].bundle.items.keys[:200])
    rows, out = [], {}
    try:
        # 1. ingest at concurrency 32
        for kind, (url, _, _) in apps.items():
            bodies = [{"user_id": f"ing-{kind}-{i % 500}", "item_id": item_keys[i % len(item_keys)], "event": "view"}
                      for i in range(a.events)]
            asyncio.run(run_load(url + "/v1/events", bodies[:200], 32))  # warm-up
            t0 = time.perf_counter()
            st, lat = asyncio.run(run_load(url + "/v1/events", bodies, 32))
            secs = time.perf_counter() - t0
            ok = [l for s, l in zip(st, lat) if s == 202]
            out[f"{kind}_ingest_events_per_s"] = round(len(ok) / secs, 1)
            out[f"{kind}_ingest_p50_ms"], out[f"{kind}_ingest_p99_ms"] = round(pct(ok, 50), 2), round(pct(ok, 99), 2)
            rows.append((f"ingest c=32 {kind}", len(ok), a.events - len(ok), out[f"{kind}_ingest_events_per_s"],
                         out[f"{kind}_ingest_p50_ms"], out[f"{kind}_ingest_p99_ms"]))
        # 2. recommendations (users with online events), kinds alternating
        rec_lat = {"file": [], "redis": []}
        for _ in range(a.rounds):
            for kind, (url, _, _) in apps.items():
                bodies = [{"user_id": f"ing-{kind}-{i % 500}", "k": 10} for i in range(a.recs)]
                asyncio.run(run_load(url + "/v1/recommendations", bodies[:50], 4))
                st, lat = asyncio.run(run_load(url + "/v1/recommendations", bodies, 4))
                rec_lat[kind] += [l for s, l in zip(st, lat) if s == 200]
        for kind, lat in rec_lat.items():
            out[f"{kind}_rec_p50_ms"], out[f"{kind}_rec_p99_ms"] = round(pct(lat, 50), 2), round(pct(lat, 99), 2)
            rows.append((f"recommend c=4 {kind}", len(lat), a.rounds * a.recs - len(lat), float("nan"),
                         out[f"{kind}_rec_p50_ms"], out[f"{kind}_rec_p99_ms"]))
        out["redis_over_file_p50_ratio"] = round(out["redis_rec_p50_ms"] / out["file_rec_p50_ms"], 3)
        # 3. Redis killed and restarted under load
        url = apps["redis"][0]
        n = 40000
        bodies = [{"user_id": f"rs-{i}", "item_id": item_keys[i % len(item_keys)], "event": "view"} for i in range(n)]
        res: dict = {}

        def load():
            res["st"], res["lat"] = asyncio.run(run_load(url + "/v1/events", bodies, 8, deadline_s=a.restart_seconds))

        th = threading.Thread(target=load)
        th.start()
        time.sleep(a.restart_seconds / 3)
        redis.kill()
        t_kill = time.monotonic()
        time.sleep(a.restart_seconds / 6)
        redis.start()
        down_s = time.monotonic() - t_kill
        th.join()
        st = res["st"]
        sent = [i for i, s in enumerate(st) if s != 0 or res["lat"][i] > 0]
        acked = [i for i in sent if st[i] == 202]
        refused = sum(1 for i in sent if st[i] == 503)
        other = sum(1 for i in sent if st[i] not in (202, 503))
        last_refused = max((i for i in sent if st[i] == 503), default=-1)
        recovered = any(st[i] == 202 for i in sent if i > last_refused)
        check = RedisEventStore(redis.url, key_prefix=prefix)
        svc = apps["redis"][2]
        lost = sum(1 for i in acked if not check.events_of(svc.user_key(bodies[i]["user_id"])))
        out.update({"events_acknowledged": len(acked), "events_refused_503": refused, "events_other_status": other,
                    "events_lost": lost, "redis_down_s": round(down_s, 2), "recovered_without_restart": recovered})
        rows.append(("redis kill+restart c=8", len(acked), refused + other, float("nan"), float("nan"), float("nan")))
    finally:
        for _, server, svc in apps.values():
            server.should_exit = True
            svc.stop()
        redis.stop()
    out.update({"machine": f"{os.cpu_count()}-core CPU ({platform.machine()})", "events": a.events, "recs": a.recs,
                "rounds": a.rounds})
    print(f"{'phase':28} {'ok':>7} {'not ok':>7} {'ok/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r[0]:28} {r[1]:7d} {r[2]:7d} {r[3]:9.1f} {r[4]:8.2f} {r[5]:8.2f}")
    print(f"redis/file recommendation p50: {out['redis_over_file_p50_ratio']}; restart: {out['events_acknowledged']} "
          f"acknowledged, {out['events_lost']} lost, {out['events_refused_503']} answered 503 while down "
          f"({out['redis_down_s']} s), recovered: {out['recovered_without_restart']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
