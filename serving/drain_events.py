"""Drain the Redis streams into the service's log files: ``python -m serving.drain_events``.

With ``serve.store.kind=redis`` the accepted events are entries of the stream ``<prefix>:events``
(``serving.redis_store``) and the experiments' lines entries of ``<prefix>:exposures`` and
``<prefix>:attributions``. This moves them, oldest first, into the same files the file store writes:

- events -> ``serve.store.event_log`` (CSV, ``serving.store.LOG_COLUMNS``), which ``python -m
  features.prepare data=serve_events`` ingests;
- exposures, attributions -> ``<serve.experiments.log_dir>/exposures.jsonl``, ``attributions.jsonl``.

Each batch (``serve.store.drain.batch`` entries) is appended with one fsynced write
(``serving.store.DurableLog``); then the id of its last entry is recorded in Redis
(``<stream>:drained``) and the drained entries are trimmed from the stream. Exactly once: before a
batch is written, its entry ids and the file's size go to ``<stream>:pending``; a drain killed between
the write and the record finds them at its next start, counts the complete lines the file gained
since that size (those are the first entries of the batch, in order) and records them as drained. One
drain runs at a time (a lock key with a lease). ``serve.store.drain.follow=true`` keeps draining every
``interval_s`` until SIGINT/SIGTERM; the default drains what is there and exits. Prints one JSON line.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
import redis
from omegaconf import DictConfig

from serving.redis_store import connect, redacted
from serving.store import LOG_COLUMNS, DurableLog, StoreUnavailable, fields_line

log = logging.getLogger("serving.drain_events")

LOCK_LEASE_MS = 60_000
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass
class StreamTarget:
    """One stream and the file it drains into."""

    stream: str
    log: DurableLog
    to_line: Callable[[dict[str, str]], str]


def event_line(fields: dict[str, str]) -> str:
    return fields_line([fields[c] for c in LOG_COLUMNS])


def jsonl_line(fields: dict[str, str]) -> str:
    return fields["line"]


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def recover_pending(client: redis.Redis, t: StreamTarget) -> int:
    """Finish a batch a killed drain wrote but did not record: the number of its entries in the file."""
    raw = client.get(t.stream + ":pending")
    if raw is None:
        return 0
    pending = json.loads(raw)
    lines, _ = t.log.read_lines(int(pending["size"]))
    n = min(len([ln for ln in lines if ln]), len(pending["ids"]))
    pipe = client.pipeline(transaction=True)
    if n:
        pipe.set(t.stream + ":drained", pending["ids"][n - 1])
        pipe.xtrim(t.stream, minid=_next_id(pending["ids"][n - 1]))
    pipe.delete(t.stream + ":pending")
    pipe.execute()
    log.warning("%s: a drain stopped mid-batch; %d of its %d entries were in %s already", t.stream, n,
                len(pending["ids"]), t.log.path)
    return n


def drain_batch(client: redis.Redis, t: StreamTarget, batch: int) -> int:
    """Move up to ``batch`` entries of ``t.stream`` into ``t.log``; the number moved."""
    last = client.get(t.stream + ":drained") or "0-0"
    entries = client.xrange(t.stream, min="(" + last, max="+", count=batch)
    if not entries:
        return 0
    lines = [t.to_line(fields) for _, fields in entries]
    ids = [entry_id for entry_id, _ in entries]
    client.set(t.stream + ":pending", json.dumps({"size": t.log.size(), "ids": ids}))
    t.log.append(lines)
    pipe = client.pipeline(transaction=True)
    pipe.set(t.stream + ":drained", ids[-1])
    pipe.delete(t.stream + ":pending")
    pipe.xtrim(t.stream, minid=_next_id(ids[-1]))
    pipe.execute()
    return len(entries)


def targets(cfg: DictConfig) -> list[StreamTarget]:
    s = cfg.serve
    prefix = str(s.store.redis.key_prefix)
    fsync = bool(s.store.fsync)
    out = [StreamTarget(f"{prefix}:events", DurableLog(s.store.event_log, header=",".join(LOG_COLUMNS), fsync=fsync),
                        event_line)]
    exp = s.get("experiments")
    if exp is not None:
        for name in ("exposures", "attributions"):
            out.append(StreamTarget(f"{prefix}:{name}", DurableLog(Path(str(exp.log_dir)) / f"{name}.jsonl",
                                                                   fsync=fsync), jsonl_line))
    return out


def drain(cfg: DictConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Drain every stream once (or until ``stop`` with ``drain.follow``); counts per stream."""
    s = cfg.serve
    url = str(s.store.url)
    client = connect(url, timeout_s=max(float(s.store.redis.timeout_s), 5.0))
    stop = stop or threading.Event()
    lock_key, token = f"{s.store.redis.key_prefix}:drain:lock", uuid.uuid4().hex
    if not client.set(lock_key, token, nx=True, px=LOCK_LEASE_MS):
        raise StoreUnavailable(f"another drain holds {lock_key} (at most one drain runs at a time; it expires "
                               f"{LOCK_LEASE_MS // 1000} s after that drain stops)")
    counts: dict[str, int] = {}
    try:
        ts = targets(cfg)
        for t in ts:
            counts[t.stream] = recover_pending(client, t)
        batch, follow, interval = int(s.store.drain.batch), bool(s.store.drain.follow), float(s.store.drain.interval_s)
        while True:
            moved = 0
            for t in ts:
                while not stop.is_set():
                    client.pexpire(lock_key, LOCK_LEASE_MS)
                    n = drain_batch(client, t, batch)
                    counts[t.stream] += n
                    moved += n
                    if n < batch:
                        break
            if not follow or stop.wait(interval if moved == 0 else 0):
                break
    finally:
        try:
            client.eval(_RELEASE, 1, lock_key, token)
        except redis.RedisError:
            pass
        client.close()
    return {"url": redacted(url), "drained": counts, "event_log": str(s.store.event_log)}


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    t0 = time.perf_counter()
    try:
        out = drain(cfg, stop)
    except (StoreUnavailable, redis.RedisError, OSError) as e:
        print(f"serving.drain_events: {e}", file=sys.stderr)
        sys.exit(2)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
