"""The exposure log: what each user in an experiment was shown, one JSON line per response.

Record fields (``EXPOSURE_FIELDS``): ``request_id``, ``user_key`` (pseudonymised), ``unit`` (the
assignment unit: the user key, or the pseudonymised session id of an anonymous visitor),
``experiment``, ``variant``, ``bundle`` (the version that answered), ``items`` (item keys in the order
shown), ``ts`` (ISO 8601, UTC), and for the guardrails ``latency_ms``, ``degraded`` and ``cold_start``.

Events that name the ``request_id`` they answer (``POST /v1/events`` with ``request_id`` and
``position``) get one line in the attribution log next to it: ``event_id`` (the id the event store
gave the event), ``request_id``, ``position``. The events themselves stay in the event log only.

Both are ``serving.store.DurableLog`` files (shared by every replica of a host, torn tails repaired).
Durability (``serve.experiments.fsync``):

- ``request``: fsync before the response leaves, exactly as the event log (about 7 ms per
  recommendation on this VM's disk).
- ``interval`` (default): the line is written to the file (the kernel's page cache) before the
  response leaves, and a background thread fsyncs every ``fsync_interval_s``. A killed service
  (``kill -9``, a crash, an out-of-memory kill) loses no exposure it answered; a power cut or a kernel
  crash can lose the last interval.

With the Redis store (``serve.store.kind=redis``, ``open_experiment_logs``) the lines go to the Redis
streams ``<prefix>:exposures`` and ``<prefix>:attributions`` instead (``RedisExperimentLogs``), and
``python -m serving.drain_events`` moves them into the same two files. ``request``: each line is in
Redis (fsynced there with ``appendfsync always``) before the response leaves. ``interval``: lines
are buffered in the replica and sent every ``fsync_interval_s`` in one round trip (kept and retried
while Redis is out of reach); a killed replica loses the lines of its last interval.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from serving.store import DurableLog

log = logging.getLogger(__name__)

_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
EXPOSURE_FIELDS = ("request_id", "user_key", "unit", "experiment", "variant", "bundle", "items", "ts",
                   "latency_ms", "degraded", "cold_start")
ATTRIBUTION_FIELDS = ("event_id", "request_id", "position")
EXPOSURES_FILE = "exposures.jsonl"
ATTRIBUTIONS_FILE = "attributions.jsonl"
FSYNC_MODES = ("request", "interval")


_ID_PREFIX = uuid.uuid4().hex[:16]   # random per process: ids of replicas and restarts never collide
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A unique id (32 hex digits): a random per-process prefix and a counter (no syscall per request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with microseconds (``2026-12-04T16:27:08.196087+00:00``)."""
    t = time.time()
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1e6):06d}+00:00"


@dataclass(frozen=True)
class Exposure:
    request_id: str
    user_key: str
    unit: str
    experiment: str
    variant: str
    bundle: str
    items: tuple[str, ...]
    ts: str
    latency_ms: float
    degraded: str | None
    cold_start: bool

    def line(self) -> str:
        """One JSON object (ASCII). Request id, names and time are plain by construction; the keys and
        items go through the JSON encoder (this runs on every response: no dict, one encoder)."""
        enc = _ENCODE
        user, unit, bundle, degraded, items = (enc(self.user_key), enc(self.unit), enc(self.bundle),
                                               enc(self.degraded), enc(list(self.items)))
        return (f'{{"request_id":"{self.request_id}","user_key":{user},"unit":{unit},'
                f'"experiment":"{self.experiment}","variant":"{self.variant}","bundle":{bundle},"items":{items},'
                f'"ts":"{self.ts}","latency_ms":{self.latency_ms:.3f},"degraded":{degraded},'
                f'"cold_start":{"true" if self.cold_start else "false"}}}')


class ExperimentLogs:
    """The exposure and attribution logs of one host (``<log_dir>/exposures.jsonl``, ``attributions.jsonl``)."""

    def __init__(self, log_dir: str | Path, *, fsync: str = "interval", fsync_interval_s: float = 0.2):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"serve.experiments.fsync: {fsync!r} is not one of {FSYNC_MODES}")
        self.dir = Path(log_dir)
        per_request = fsync == "request"
        self.exposures = DurableLog(self.dir / EXPOSURES_FILE, fsync=per_request)
        self.attributions = DurableLog(self.dir / ATTRIBUTIONS_FILE, fsync=per_request)
        self.fsync_mode = fsync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not per_request:
            self._thread = threading.Thread(target=self._flush_loop, args=(float(fsync_interval_s),),
                                            name="exposure-fsync", daemon=True)
            self._thread.start()

    def log_exposure(self, e: Exposure) -> None:
        """Durable as configured once this returns (see the module docstring)."""
        self.exposures.append([e.line()])

    def log_attributions(self, rows: Sequence[tuple[str, str, int | None]]) -> None:
        """``(event_id, request_id, position)`` of events that named the response they answer."""
        lines = [json.dumps({"event_id": ev, "request_id": rid, "position": pos}, ensure_ascii=True,
                            separators=(",", ":")) for ev, rid, pos in rows]
        if lines:
            self.attributions.append(lines)

    def flush(self) -> None:
        """fsync both files now."""
        for lg in (self.exposures, self.attributions):
            try:
                fd = os.open(lg.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _flush_loop(self, interval: float) -> None:
        sizes = (-1, -1)
        while not self._stop.wait(interval):
            now = (self.exposures.size(), self.attributions.size())
            if now != sizes:
                try:
                    self.flush()
                    sizes = now
                except OSError as e:  # keep trying; the next interval retries
                    log.error("exposure log fsync failed: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


MAX_BUFFERED = 100_000  # lines a replica keeps while Redis is out of reach (then the oldest are dropped, counted)


def open_experiment_logs(exp_cfg: Any, store_cfg: Any = None) -> "ExperimentLogs | RedisExperimentLogs":
    """The experiment logs ``serve.experiments`` and ``serve.store`` configure: files, or Redis
    streams when ``serve.store.kind=redis``."""
    kind = str(store_cfg.get("kind", "file")) if store_cfg is not None and hasattr(store_cfg, "get") else "file"
    if kind == "redis":
        from serving.redis_store import connect

        return RedisExperimentLogs(connect(str(store_cfg.url), timeout_s=float(store_cfg.redis.timeout_s)),
                                   str(store_cfg.redis.key_prefix), fsync=str(exp_cfg.fsync),
                                   fsync_interval_s=float(exp_cfg.fsync_interval_s))
    return ExperimentLogs(exp_cfg.log_dir, fsync=str(exp_cfg.fsync), fsync_interval_s=float(exp_cfg.fsync_interval_s))


class RedisExperimentLogs:
    """Exposure and attribution lines as entries (field ``line``) of two Redis streams (module docstring)."""

    def __init__(self, client: Any, key_prefix: str, *, fsync: str = "interval", fsync_interval_s: float = 0.2):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"serve.experiments.fsync: {fsync!r} is not one of {FSYNC_MODES}")
        self.client = client
        self.streams = {"exposures": f"{key_prefix}:exposures", "attributions": f"{key_prefix}:attributions"}
        self.fsync_mode = fsync
        self.n_dropped = 0
        self._buffer: collections.deque[tuple[str, str]] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if fsync == "interval":
            self._thread = threading.Thread(target=self._flush_loop, args=(float(fsync_interval_s),),
                                            name="exposure-redis", daemon=True)
            self._thread.start()

    def _send(self, rows: Sequence[tuple[str, str]]) -> None:
        import redis

        pipe = self.client.pipeline(transaction=False)
        for stream, line in rows:
            pipe.xadd(self.streams[stream], {"line": line})
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise ConnectionError(f"experiment log not written to Redis: {e}") from None  # an OSError

    def _log(self, stream: str, lines: Sequence[str]) -> None:
        rows = [(stream, line) for line in lines]
        if self.fsync_mode == "request":
            self._send(rows)
            return
        with self._lock:
            self._buffer.extend(rows)
            while len(self._buffer) > MAX_BUFFERED:
                self._buffer.popleft()
                self.n_dropped += 1

    def log_exposure(self, e: Exposure) -> None:
        self._log("exposures", [e.line()])

    def log_attributions(self, rows: Sequence[tuple[str, str, int | None]]) -> None:
        self._log("attributions", [json.dumps({"event_id": ev, "request_id": rid, "position": pos},
                                              ensure_ascii=True, separators=(",", ":")) for ev, rid, pos in rows])

    def flush(self) -> None:
        """Send what is buffered now (kept for the next try when Redis is out of reach)."""
        with self._lock:
            rows = list(self._buffer)
        if not rows:
            return
        self._send(rows)
        with self._lock:
            for _ in range(min(len(rows), len(self._buffer))):
                self._buffer.popleft()

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except OSError as e:
                log.error("%s (kept, retried in %.1f s)", e, interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.flush()
        except OSError as e:
            log.error("%s: %d lines not written", e, len(self._buffer))
