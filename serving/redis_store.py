"""The Redis online store (``serve.store.kind=redis``): one event stream and per-user sequences in
Redis, shared by every replica on every host.

Keys (``<p>`` = ``serve.store.redis.key_prefix``):

- ``<p>:events``: a Redis stream, one entry per accepted event with the fields of the event log
  (``serving.store.LOG_COLUMNS``). ``python -m serving.drain_events`` moves it into the CSV event log
  that ``features.prepare data=serve_events`` ingests.
- ``<p>:seq:<user_key>``: a list of the user's last ``max_per_user`` events (event-log CSV lines,
  oldest first). A replica reads it on every recommendation (one ``LRANGE``, the request's one round
  trip: the rate limit's leases add one only now and then), so an event accepted by any replica is in
  the next recommendation from every replica.
- ``<p>:trend:<bucket>``: item counts per time bucket (``trending_window_s / 60`` s) for trending
  items; read at most once a second per replica.
- ``<p>:rate:<key digest>``: the token bucket of an API key (``RedisRateLimiter``: shared by every
  replica, taken in short leases).

Durability: ``append`` writes the stream entries, the sequences and the counts in one ``MULTI``/
``EXEC`` transaction and returns once Redis answered. Redis with ``appendonly yes`` and
``appendfsync always`` writes and fsyncs its append-only file before it answers, so an event the
API acknowledged (202) survives a Redis crash or restart. The store checks this at start
(``CONFIG GET``) and refuses another setting unless ``serve.store.redis.require_aof_always=false``
(a managed Redis that hides ``CONFIG`` is accepted with a warning: state its durability yourself).

Faults: Redis unreachable at start -> ``StoreUnavailable`` naming ``serve.store.url`` (the service
does not start). Redis lost while serving -> ``append`` raises ``StoreUnavailable`` (503: never 202
for an event not stored); reads answer from this replica's cache of the sequences it read last
(``unavailable`` is true, the recommendation says ``degraded: "store"``) and Redis is tried again
every ``retry_interval_s``; once it answers, everything goes back to normal without a restart. An
``append`` whose answer was lost in a failure may have been stored all the same: the client got 503,
and its retry can store the event a second time (at least once, never lost once acknowledged).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.store import (LOG_COLUMNS, OnlineEvent, StoreUnavailable, event_fields, fields_line, parse_event_line,
                           stamp)

log = logging.getLogger(__name__)

N_TREND_BUCKETS = 60


def redacted(url: str) -> str:
    """``url`` without its password (for error messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str, *, timeout_s: float = 0.25, setting: str = "serve.store.url") -> redis.Redis:
    """A client of ``url`` that answered PING; ``StoreUnavailable`` naming ``setting`` otherwise."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 1), decode_responses=True)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as e:
        raise StoreUnavailable(f"{setting}={redacted(url)}: Redis is not reachable ({type(e).__name__}: {e})") from None
    return client


def check_durability(client: redis.Redis, url: str) -> str:
    """``appendonly``/``appendfsync`` of the server: "always" when acknowledged writes are fsynced,
    the setting found otherwise, "unknown" when ``CONFIG`` is not allowed."""
    try:
        conf = client.config_get("append*")
    except redis.ResponseError:
        return "unknown"
    if conf.get("appendonly") != "yes":
        return "appendonly=" + str(conf.get("appendonly"))
    return "always" if conf.get("appendfsync") == "always" else "appendfsync=" + str(conf.get("appendfsync"))


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "shoprec"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def seq(self, user_key: str) -> str:
        return f"{self.prefix}:seq:{user_key}"

    def trend(self, bucket: int) -> str:
        return f"{self.prefix}:trend:{bucket}"

    def stream(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def rate(self, digest: str) -> str:
        return f"{self.prefix}:rate:{digest}"


class RedisEventStore:
    """The ``OnlineStore`` on Redis (see the module docstring)."""

    def __init__(self, url: str, *, max_per_user: int = 200, trending_window_s: float = 3600.0,
                 key_prefix: str = "shoprec", timeout_s: float = 0.25, retry_interval_s: float = 0.5,
                 require_aof_always: bool = True, cache_users: int = 100_000):
        self.url = url
        self.client = connect(url, timeout_s=timeout_s)
        durability = check_durability(self.client, url)
        if durability == "unknown":
            log.warning("serve.store.url=%s: CONFIG is not allowed, so appendfsync cannot be checked: an event is "
                        "acknowledged once Redis answered (durable only as configured there)", redacted(url))
        elif durability != "always" and require_aof_always:
            raise StoreUnavailable(
                f"serve.store.url={redacted(url)}: Redis runs with {durability}; acknowledged events need "
                f"appendonly yes + appendfsync always (or set serve.store.redis.require_aof_always=false)")
        self.durability = durability
        self.keys = RedisKeys(key_prefix)
        self.max_per_user = int(max_per_user)
        self.trending_window_s = float(trending_window_s)
        self.bucket_s = max(self.trending_window_s / N_TREND_BUCKETS, 1.0)
        self.retry_interval_s = float(retry_interval_s)
        self.cache_users = int(cache_users)
        self._cache: collections.OrderedDict[str, tuple[list[str], list[OnlineEvent]]] = collections.OrderedDict()
        self._trend_cache: tuple[float, dict[str, int]] = (-1.0, {})
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.n_unavailable = 0      # operations that found Redis out of reach
        self.n_bad_lines = 0

    @classmethod
    def from_cfg(cls, store_cfg: Any, *, trending_window_s: float = 3600.0) -> "RedisEventStore":
        r = store_cfg.redis
        return cls(str(store_cfg.url), trending_window_s=trending_window_s, key_prefix=str(r.key_prefix),
                   timeout_s=float(r.timeout_s), retry_interval_s=float(r.retry_interval_s),
                   require_aof_always=bool(r.require_aof_always), cache_users=int(r.cache_users),
                   max_per_user=int(r.max_per_user))

    # state --------------------------------------------------------------------------------------
    @property
    def unavailable(self) -> bool:
        return self._down_since is not None

    def _failed(self, e: Exception, what: str) -> None:
        now = time.monotonic()
        self.n_unavailable += 1
        if self._down_since is None:
            self._down_since = now
            log.error("Redis at %s lost (%s: %s): events answer 503, reads come from this replica's cache",
                      redacted(self.url), what, e)
        self._retry_at = now + self.retry_interval_s

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("Redis at %s is back after %.1f s", redacted(self.url), time.monotonic() - self._down_since)
            self._down_since = None

    def _skip_reads(self) -> bool:
        """While Redis is out of reach, reads try it again only every ``retry_interval_s``."""
        return self._down_since is not None and time.monotonic() < self._retry_at

    # writing ------------------------------------------------------------------------------------
    def append(self, events: list[OnlineEvent]) -> list[OnlineEvent]:
        """Store the events in one transaction; returns once Redis acknowledged them (durable with
        ``appendfsync always``). ``ValueError`` for a bad key or time (nothing stored),
        ``StoreUnavailable`` when Redis did not acknowledge."""
        stamped = stamp(events)
        rows = [event_fields(e) for e in stamped]
        if not rows:
            return stamped
        per_user: dict[str, list[str]] = {}
        pipe = self.client.pipeline(transaction=True)
        for e, row in zip(stamped, rows):
            pipe.xadd(self.keys.events, dict(zip(LOG_COLUMNS, row)))
            per_user.setdefault(e.user_key, []).append(fields_line(row))
        for user, lines in per_user.items():
            key = self.keys.seq(user)
            pipe.rpush(key, *lines)
            pipe.ltrim(key, -self.max_per_user, -1)
        bucket = int(stamped[0].received_at // self.bucket_s)
        tkey = self.keys.trend(bucket)
        for item, n in collections.Counter(e.item_key for e in stamped).items():
            pipe.hincrby(tkey, item, n)
        pipe.expire(tkey, int(self.trending_window_s + 2 * self.bucket_s))
        try:
            pipe.execute()
        except redis.RedisError as e:
            self._failed(e, "append")
            raise StoreUnavailable(f"the event store (Redis at {redacted(self.url)}) did not take the events: "
                                   f"{type(e).__name__}: {e}") from None
        self._recovered()
        return stamped

    # reading ------------------------------------------------------------------------------------
    def events_of(self, user_key: str) -> list[OnlineEvent]:
        """The user's events from Redis (oldest first); from this replica's cache while Redis is out of reach."""
        cached = self._cache.get(user_key)
        if not self._skip_reads():
            try:
                lines = self.client.lrange(self.keys.seq(user_key), 0, -1)
            except redis.RedisError as e:
                self._failed(e, "read")
            else:
                self._recovered()
                if cached is not None and cached[0] == lines:
                    self._touch(user_key)
                    return list(cached[1])
                events = self._parse(lines)
                if lines or cached is not None:
                    self._remember(user_key, lines, events)
                return list(events)
        return [] if cached is None else list(cached[1])

    def _parse(self, lines: list[str]) -> list[OnlineEvent]:
        out = []
        for line in lines:
            try:
                out.append(parse_event_line(line))
            except ValueError:
                self.n_bad_lines += 1
        return out

    def _remember(self, user_key: str, lines: list[str], events: list[OnlineEvent]) -> None:
        with self._lock:
            self._cache[user_key] = (lines, events)
            self._cache.move_to_end(user_key)
            while len(self._cache) > self.cache_users:
                self._cache.popitem(last=False)

    def _touch(self, user_key: str) -> None:
        with self._lock:
            if user_key in self._cache:
                self._cache.move_to_end(user_key)

    def trending(self, now: float | None = None) -> dict[str, int]:
        """Item key -> events received in the last ``trending_window_s`` (to the bucket), at most 1 s old."""
        t = time.time() if now is None else now
        stamp_, counts = self._trend_cache
        if 0 <= t - stamp_ < 1.0 or self._skip_reads():
            return dict(counts)
        first = int((t - self.trending_window_s) // self.bucket_s) + 1
        last = int(t // self.bucket_s)
        pipe = self.client.pipeline(transaction=False)
        for b in range(first, last + 1):
            pipe.hgetall(self.keys.trend(b))
        try:
            parts = pipe.execute()
        except redis.RedisError as e:
            self._failed(e, "trending")
            return dict(counts)
        self._recovered()
        total: collections.Counter[str] = collections.Counter()
        for part in parts:
            for item, n in part.items():
                total[item] += int(n)
        out = {k: v for k, v in total.items() if v > 0}
        self._trend_cache = (t, out)
        return dict(out)

    # privacy ------------------------------------------------------------------------------------
    def forget_user(self, user_key: str) -> int:
        """Delete the user's sequence and their entries still in the stream (not drained yet); the
        number of events deleted. ``StoreUnavailable`` when Redis is out of reach (nothing promised)."""
        try:
            n = int(self.client.llen(self.keys.seq(user_key)))
            ids = [entry_id for entry_id, fields in _scan_stream(self.client, self.keys.events)
                   if fields.get("user_key") == user_key]
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.keys.seq(user_key))
            for i in range(0, len(ids), 1000):
                pipe.xdel(self.keys.events, *ids[i:i + 1000])
            pipe.execute()
        except redis.RedisError as e:
            self._failed(e, "forget")
            raise StoreUnavailable(f"Redis at {redacted(self.url)}: user not forgotten ({e})") from None
        with self._lock:
            self._cache.pop(user_key, None)
        return max(n, len(ids))

    # shared rate limits --------------------------------------------------------------------------
    def rate_limiter(self, rate_per_s: float, burst: float) -> "RedisRateLimiter":
        """Token buckets per API key in this Redis (``serving.auth.Auth.share_limits``)."""
        return RedisRateLimiter(self.client, self.keys, rate_per_s, burst, retry_interval_s=self.retry_interval_s)

    # ops ----------------------------------------------------------------------------------------
    @property
    def n_events(self) -> int:
        """Events in the stream not drained yet (0 while Redis is out of reach)."""
        try:
            return int(self.client.xlen(self.keys.events))
        except redis.RedisError:
            return 0

    def close(self) -> None:
        self.client.close()


def _scan_stream(client: redis.Redis, key: str, count: int = 1000):
    """Every ``(id, fields)`` of a stream, oldest first, in pages."""
    start = "-"
    while True:
        page = client.xrange(key, min=start, max="+", count=count)
        if not page:
            return
        yield from page
        if len(page) < count:
            return
        last = page[-1][0]
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


# A token bucket per key, atomic in Redis, on Redis's clock (replicas' clocks may differ). ARGV: rate, burst,
# the tokens wanted (a lease, at least 1) and the tokens given back (the unused rest of the caller's last
# lease). Takes up to the wanted number when at least one token is there. Returns "<granted> <wait>": the
# tokens taken and, when none was, the seconds until one is (as text: a Lua number would come back as an
# integer).
_TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, back = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate + back)
local granted, wait = 0, 0
if tokens >= 1 then
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(granted) .. ' ' .. tostring(wait)
"""


@dataclass
class Lease:
    """Tokens of one key's shared bucket that this replica took ahead and may spend until ``until``."""

    tokens: int = 0
    granted: int = 0
    until: float = 0.0
    want: int = 1


class RedisRateLimiter:
    """Per-key token buckets shared by every replica through Redis.

    ``take(digest)`` is 0.0 when a token was taken, the seconds until one is available otherwise, and
    None while Redis is out of reach (the caller then limits per replica).

    Leases: a replica that spends a key's tokens quickly takes several in one script call and spends
    them locally for up to ``lease_s``, so a busy key costs one Redis round trip per lease rather than
    one per request. A lease holds at most ``rate_per_s * lease_s`` tokens (and a tenth of ``burst``);
    its size doubles while leases run out before they expire and falls to twice the tokens spent
    when one expires; the unused rest goes back to the bucket with the replica's next call. Tokens
    only ever leave the shared bucket once, so every replica together never gets more than the one
    bucket allows; a token leased by one replica and not spent yet is the only thing another replica
    can miss (at most ``lease_s`` worth of the rate). With ``rate_per_s * lease_s < 2`` every request
    calls Redis (exact, as without leases).
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, rate_per_s: float, burst: float, *,
                 retry_interval_s: float = 0.5, lease_s: float = 0.1):
        self.client = client
        self.keys = keys
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.retry_interval_s = float(retry_interval_s)
        self.lease_s = float(lease_s)
        self.max_lease = max(1, int(min(self.rate_per_s * self.lease_s, self.burst / 10)))
        self._script = client.register_script(_TOKEN_BUCKET)
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self.n_local = 0  # decisions taken per replica because Redis was out of reach
        self.n_calls = 0  # script calls (Redis round trips)

    def take(self, digest: str) -> float | None:
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(digest)
            if lease is not None and lease.tokens >= 1 and now < lease.until:
                lease.tokens -= 1
                return 0.0
            if now < self._retry_at:
                self.n_local += 1
                return None
            if lease is None:
                lease = self._leases[digest] = Lease()
                if len(self._leases) > 10_000:  # bounded: keys not seen for a while lose their (expired) lease
                    self._leases = {d: x for d, x in self._leases.items() if x.until > now or d == digest}
            spent = lease.granted - lease.tokens
            lease.want = min(self.max_lease, max(1, 2 * spent))
            back, lease.tokens, lease.granted = lease.tokens, 0, 0
            want = lease.want
        try:
            self.n_calls += 1
            granted, wait = self._script(keys=[self.keys.rate(digest)],
                                         args=[self.rate_per_s, self.burst, want, back]).split()
        except redis.RedisError as e:
            if self._retry_at == 0.0 or time.monotonic() - self._retry_at > 10 * self.retry_interval_s:
                log.error("rate limits fall back to per replica: Redis out of reach (%s)", e)
            self._retry_at = time.monotonic() + self.retry_interval_s
            self.n_local += 1
            return None
        n = int(float(granted))
        if n < 1:
            return float(wait)
        with self._lock:  # one token is this request's; the rest is the lease
            lease.tokens += n - 1
            lease.granted += n
            lease.until = time.monotonic() + self.lease_s
        return 0.0
