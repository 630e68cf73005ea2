"""API keys, per-key rate limits and the request-size limit.

Keys come from ``serve.auth.api_keys_sha256`` (sha256 hex digests in config) and from the environment
variable named by ``serve.auth.api_keys_env`` (comma-separated clear keys, hashed at start and never
kept). A request carries its key in ``X-API-Key`` (or ``Authorization: Bearer <key>``): none -> 401,
an unknown one -> 403, over the key's token bucket -> 429 with ``Retry-After``. Comparisons are
constant-time on the digests. ``BodyLimitMiddleware`` answers 413 to bodies over
``serve.http.max_body_bytes`` before the app parses them.

Rate limits (``serve.auth.rate_limit_per_s``, ``burst``) are per key. With the Redis store
(``serve.store.kind=redis``) and ``serve.auth.rate_limit_scope: cluster`` (the default, ``auto``)
the token bucket of a key lives in Redis (``serving.redis_store.RedisRateLimiter``), so every
replica on every host draws from the same bucket; a replica takes a busy key's tokens in short leases
(at most 0.1 s of the rate, the unused rest given back), so the limit costs one Redis round trip per
lease, not one per request, and every replica together still never exceeds the one bucket. Otherwise,
and while Redis is out of reach, each replica keeps its own buckets: N replicas then allow up to N
times the limit.

Keys rotate without a restart through ``serve.auth.keys_file``: a JSON file ``{"api_keys_sha256": [...],
"admin_keys_sha256": [...]}`` (digests only) whose keys are accepted besides the configured ones. Each
replica re-reads it when its modification time or size changes (checked at most once a second): a key
added there works, and a key removed there is refused, within about a second; a file that cannot be read
or parsed keeps the keys read before (logged). Refused keys (401, 403) are recorded in the audit log
(``serving.audit``, action ``auth.failure``, the presented key's digest prefix, never the key), at most one
record per key and status a minute and at most 10 a second in all, with the count of the ones not
recorded separately.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

API_KEY_HEADER = "x-api-key"
_HEX = frozenset("0123456789abcdef")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AuthError(Exception):
    """Refused: ``status`` is 401, 403 or 429."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class Auth:
    """Accepted key digests and per-key rate limits."""

    enabled: bool
    key_digests: frozenset[str]
    admin_digests: frozenset[str] = frozenset()
    rate_per_s: float = 500.0
    burst: float = 1000.0
    scope: str = "auto"             # auto | cluster (shared through Redis when the store is Redis) | replica
    shared: Any = None              # a RedisRateLimiter (see share_limits), else per-replica buckets
    keys_file: str | None = None    # rotatable keys (digests), re-read on change (see the module docstring)
    _file_keys: frozenset[str] = frozenset()
    _file_admin: frozenset[str] = frozenset()
    _file_stamp: tuple[int, int] | None = None
    _next_stat: float = 0.0
    _failures: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_cfg(cls, cfg: Any, environ: dict[str, str] | None = None) -> "Auth":
        env = os.environ if environ is None else environ
        keys = _digests(cfg.api_keys_sha256, "serve.auth.api_keys_sha256") | _env_digests(env.get(cfg.api_keys_env, ""))
        admin = _digests(cfg.admin_keys_sha256, "serve.auth.admin_keys_sha256") | _env_digests(env.get(cfg.admin_keys_env, ""))
        if float(cfg.rate_limit_per_s) <= 0 or float(cfg.burst) < 1:
            raise ValueError(f"serve.auth.rate_limit_per_s={cfg.rate_limit_per_s} must be > 0 and "
                             f"serve.auth.burst={cfg.burst} >= 1")
        scope = str(cfg.get("rate_limit_scope", "auto") if hasattr(cfg, "get") else "auto")
        if scope not in ("auto", "cluster", "replica"):
            raise ValueError(f"serve.auth.rate_limit_scope={scope!r}: expected auto, cluster or replica")
        keys_file = cfg.get("keys_file") if hasattr(cfg, "get") else None
        auth = cls(enabled=bool(cfg.enabled), key_digests=frozenset(keys), admin_digests=frozenset(admin),
                   rate_per_s=float(cfg.rate_limit_per_s), burst=float(cfg.burst), scope=scope,
                   keys_file=str(keys_file) if keys_file else None)
        auth.refresh_keys(strict=True)
        return auth

    def refresh_keys(self, *, strict: bool = False, now: float | None = None) -> bool:
        """Re-read ``keys_file`` when it changed (at most once a second); True when the keys changed.
        ``strict``: a bad file is an error naming it (at start) instead of a logged warning."""
        if self.keys_file is None:
            return False
        now = time.monotonic() if now is None else now
        if not strict and now < self._next_stat:
            return False
        self._next_stat = now + 1.0
        try:
            st = os.stat(self.keys_file)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._file_stamp:
                return False
            with open(self.keys_file) as fh:
                doc = json.load(fh)
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object with api_keys_sha256 and admin_keys_sha256")
            keys = _digests(doc.get("api_keys_sha256"), f"{self.keys_file}: api_keys_sha256")
            admin = _digests(doc.get("admin_keys_sha256"), f"{self.keys_file}: admin_keys_sha256")
        except (OSError, ValueError) as e:
            if strict:
                raise ValueError(f"serve.auth.keys_file={self.keys_file}: {e}") from None
            logging.getLogger(__name__).error("serve.auth.keys_file=%s not re-read (the previous keys stay): %s",
                                              self.keys_file, e)
            return False
        with self._lock:
            self._file_keys, self._file_admin, self._file_stamp = frozenset(keys), frozenset(admin), stamp
        from serving.audit import try_audit_event

        try_audit_event("auth.keys_reloaded", "service", keys_file=str(self.keys_file), n_api_keys=len(keys),
                        n_admin_keys=len(admin))
        return True

    def _refused(self, status: int, digest: str | None, admin: bool) -> None:
        """Record a refused key in the audit log (at most one record per key and status a minute)."""
        who = f"apikey:{digest[:12]}" if digest else "anonymous"
        now = time.monotonic()
        with self._lock:
            slot = self._failures.setdefault((status, who), [-1e18, 0])
            slot[1] += 1
            if now - slot[0] < 60.0:
                return
            total = self._failures.setdefault((0, "*"), [now, 0])   # all keys: at most 10 records a second
            if now - total[0] >= 1.0:
                total[0], total[1] = now, 0
            total[1] += 1
            if total[1] > 10:
                return   # counted in its slot; recorded with its count once the flood ebbs
            count, slot[0], slot[1] = slot[1], now, 0
            if len(self._failures) > 10000:  # bounded: a flood of random keys cannot grow it without end
                self._failures.clear()
        from serving.audit import try_audit_event

        try_audit_event("auth.failure", who, status=status, admin_route=admin, count=count)

    def share_limits(self, store: Any) -> None:
        """Share the buckets through ``store``'s rate limiter (the Redis store has one) unless
        ``rate_limit_scope`` is ``replica``; ``cluster`` without one is an error."""
        limiter = getattr(store, "rate_limiter", None)
        if self.scope == "replica":
            return
        if limiter is None:
            if self.scope == "cluster":
                raise ValueError("serve.auth.rate_limit_scope=cluster needs serve.store.kind=redis "
                                 "(the buckets are shared through Redis)")
            return
        self.shared = limiter(self.rate_per_s, self.burst)

    def check(self, key: str | None, *, admin: bool = False, now: float | None = None) -> str:
        """The caller's key digest, or ``AuthError``. With auth disabled every caller is "anonymous"."""
        if not self.enabled:
            return "anonymous"
        if not key:
            self._refused(401, None, admin)
            raise AuthError(401, "missing API key: send it in the X-API-Key header")
        digest = sha256_hex(key)
        self.refresh_keys()
        allowed = self.admin_digests if admin else self.key_digests
        rotated = self._file_admin if admin else self._file_keys
        if rotated:
            allowed = allowed | rotated
        if not any(hmac.compare_digest(digest, d) for d in allowed):
            self._refused(403, digest, admin)
            raise AuthError(403, "this API key is not allowed here" if admin else "invalid API key")
        wait = None if self.shared is None or now is not None else self.shared.take(digest)
        if wait is None:  # per replica: no shared limiter, or Redis out of reach
            wait = self._bucket(digest, now).take(time.monotonic() if now is None else now)
        if wait > 0:
            raise AuthError(429, "rate limit exceeded for this API key", retry_after=wait)
        return digest

    def _bucket(self, digest: str, now: float | None) -> TokenBucket:
        with self._lock:
            b = self._buckets.get(digest)
            if b is None:
                b = self._buckets[digest] = TokenBucket(self.rate_per_s, self.burst, self.burst,
                                                        time.monotonic() if now is None else now)
            return b


def key_from_headers(headers: Any) -> str | None:
    key = headers.get(API_KEY_HEADER)
    if key:
        return key.strip()
    authz = headers.get("authorization", "")
    if authz.lower().startswith("bearer "):
        return authz[7:].strip() or None
    return None


def _digests(values: Iterable[str] | None, setting: str) -> set[str]:
    out = set()
    for v in values or ():
        v = str(v).strip().lower()
        if len(v) != 64 or not set(v) <= _HEX:
            raise ValueError(f"{setting}: {v[:8]}... is not a sha256 hex digest (64 hex characters)")
        out.add(v)
    return out


def _env_digests(text: str) -> set[str]:
    return {sha256_hex(k.strip()) for k in text.split(",") if k.strip()}


def keys_from_driver_env(auth_cfg: dict, environ: dict[str, str] | None = None) -> dict:
    """``serve.auth`` with the keys named by its env variables folded in as sha256 digests.

    Called where the app is built: Serve replicas are Ray workers whose environment is the Ray
    instance's, not the caller's, so clear keys set in the caller's environment would never reach
    them. Only digests travel.
    """
    env = os.environ if environ is None else environ
    out = dict(auth_cfg)
    out["api_keys_sha256"] = sorted(set(out.get("api_keys_sha256") or []) | _env_digests(env.get(out["api_keys_env"], "")))
    out["admin_keys_sha256"] = sorted(set(out.get("admin_keys_sha256") or []) | _env_digests(env.get(out["admin_keys_env"], "")))
    return out


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _reject(send, 400, "invalid Content-Length header")
                if declared > self.max_bytes:
                    return await _reject(send, 413, f"request body over {self.max_bytes} bytes")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await _reject(send, 413, f"request body over {self.max_bytes} bytes")
            chunks.append(body)
            more = msg.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)


async def _reject(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
