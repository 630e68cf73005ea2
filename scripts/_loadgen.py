"""Loopback HTTP load for scripts/bench_serve.py and scripts/check_serve_reliability.py.

``closed_loop``: ``concurrency`` workers send requests back to back (latency and throughput).
``open_loop``: requests start on a fixed schedule (``rps``) whatever the answers do, so failures
during a bundle swap or a replica kill are counted, not hidden by back-pressure; a request that
takes longer than ``timeout`` in all counts as failed.
"""
from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import numpy as np


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)   # seconds since the load began, per answered request
    t0: float = 0.0
    client_cpu_s: float = 0.0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    exceptions: collections.Counter = field(default_factory=collections.Counter)
    bodies: list[Any] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.statuses.items() if k >= 400) + sum(self.exceptions.values())

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {"n": self.n, "failed": self.failed, "p50_ms": float(np.median(lat)),
                "p99_ms": float(np.percentile(lat, 99)), "rps": self.n / self.seconds if self.seconds else 0.0}


async def _one(client: httpx.AsyncClient, url: str, body: Any, res: LoadResult, keep_body: bool,
               timeout: float | None = None) -> None:
    """One POST. ``timeout``: the whole request's limit, from the moment it was due (httpx's own timeouts
    are per connect / read / pool wait, so a request queued behind an overloaded server could take
    minutes and still count as answered); past it the request counts as failed (``TotalTimeout``)."""
    t0 = time.perf_counter()
    try:
        r = await asyncio.wait_for(client.post(url, json=body), timeout)
        res.latencies_ms.append((time.perf_counter() - t0) * 1000)
        res.starts.append(t0 - res.t0)
        res.statuses[r.status_code] += 1
        if keep_body and r.status_code == 200:
            res.bodies.append(r.json())
    except asyncio.TimeoutError:
        res.exceptions["TotalTimeout"] += 1
    except httpx.HTTPError as e:
        res.exceptions[type(e).__name__] += 1


def _client(concurrency: int, headers: dict[str, str], timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, trust_env=False)


async def closed_loop(url: str, make_body: Callable[[int], Any], *, concurrency: int, n_requests: int,
                      max_seconds: float, headers: dict[str, str], warmup: int = 20,
                      timeout: float = 10.0) -> LoadResult:
    res = LoadResult()
    async with _client(concurrency, headers, timeout) as client:
        for i in range(warmup):
            await _one(client, url, make_body(i), LoadResult(), False)
        counter = iter(range(n_requests))
        deadline = time.perf_counter() + max_seconds

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                await _one(client, url, make_body(i), res, False)

        t0 = res.t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.seconds = time.perf_counter() - t0
    return res


async def _one_aio(session: Any, url: str, body: Any, res: LoadResult, keep_body: bool, timeout: float) -> None:
    """``_one`` on aiohttp (``timeout``: the whole request)."""
    import aiohttp

    t0 = time.perf_counter()
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.read()
        res.latencies_ms.append((time.perf_counter() - t0) * 1000)
        res.starts.append(t0 - res.t0)
        res.statuses[r.status] += 1
        if keep_body and r.status == 200:
            res.bodies.append(json.loads(data))
    except asyncio.TimeoutError:
        res.exceptions["TotalTimeout"] += 1
    except aiohttp.ClientError as e:
        res.exceptions[type(e).__name__] += 1


async def open_loop(url: str, make_body: Callable[[int], Any], *, rps: float, seconds: float,
                    headers: dict[str, str], keep_bodies: bool = False, timeout: float = 10.0,
                    during: Callable[[], Any] | None = None) -> LoadResult:
    """Requests at ``rps`` for ``seconds``; ``during`` (a coroutine function) runs alongside.

    On aiohttp (Ray Serve's own dependency), whose client costs a fraction of httpx's CPU per
    request: the generator shares the machine's two cores with the service it loads.
    ``LoadResult.client_cpu_s`` is the CPU the generator's process used meanwhile."""
    import aiohttp

    res = LoadResult()
    cpu0 = time.process_time()
    connector = aiohttp.TCPConnector(limit=int(rps) + 8)
    async with aiohttp.ClientSession(headers=headers, connector=connector, trust_env=False) as session:
        side = asyncio.create_task(during()) if during else None
        tasks = []
        t0 = res.t0 = time.perf_counter()
        n = int(rps * seconds)
        for i in range(n):
            delay = t0 + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one_aio(session, url, make_body(i), res, keep_bodies, timeout)))
        await asyncio.gather(*tasks)
        res.seconds = time.perf_counter() - t0
        if side:
            await side
    res.client_cpu_s = time.process_time() - cpu0
    return res
