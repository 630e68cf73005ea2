"""The Redis online store on a real redis-server (AOF, appendfsync always): shared sequences between
replicas, durability across a crash, faults (unreachable at start, lost while serving, recovery),
the drain into the event-log format, shared rate limits and the experiments' streams."""
from __future__ import annotations

import csv
import itertools
import time

import pytest

from serving.redis_store import RedisEventStore
from serving.store import LOG_COLUMNS, EventStore, OnlineEvent, StoreUnavailable
from serving.stores import open_store

_prefix = itertools.count()


@pytest.fixture()
def prefix() -> str:
    return f"t{next(_prefix)}-{time.time_ns()}"


def ev(user="u1", item="A", event="view", ts=1.7e9) -> OnlineEvent:
    return OnlineEvent(user, item, event, ts)


def redis_overrides(redis_server, prefix: str) -> list[str]:
    return ["serve.store.kind=redis", f"serve.store.url={redis_server.url}", f"serve.store.redis.key_prefix={prefix}",
            "serve.store.redis.retry_interval_s=0.1"]


def test_two_replicas_share_sequences_and_trending(redis_server, prefix):
    a = RedisEventStore(redis_server.url, key_prefix=prefix, max_per_user=3)
    b = RedisEventStore(redis_server.url, key_prefix=prefix, max_per_user=3)
    stamped = a.append([ev(item="A"), ev(item='Bag, "jumbo"'), ev(user="u2", item="ünï ✓")])
    assert all(e.event_id and e.received_at > 0 for e in stamped)
    assert [e.item_key for e in b.events_of("u1")] == ["A", 'Bag, "jumbo"']  # the other replica, at once
    assert [e.event_id for e in b.events_of("u1")] == [e.event_id for e in stamped[:2]]
    b.append([ev(item=f"X{i}") for i in range(3)])
    assert [e.item_key for e in a.events_of("u1")] == ["X0", "X1", "X2"]  # the last max_per_user
    assert b.trending() == {"A": 1, 'Bag, "jumbo"': 1, "ünï ✓": 1, "X0": 1, "X1": 1, "X2": 1}
    assert a.events_of("nobody") == []


def test_bad_keys_are_refused_before_anything_is_stored(redis_server, prefix):
    s = RedisEventStore(redis_server.url, key_prefix=prefix)
    with pytest.raises(ValueError, match="item_key"):
        s.append([ev(item="ok"), ev(item="bad\nline")])
    assert s.events_of("u1") == [] and s.n_events == 0


def test_unreachable_at_start_names_the_setting(make_cfg):
    from serving.redis_local import free_port
    from serving.service import Service

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match=rf"serve\.store\.url=redis://127\.0\.0\.1:\d+/0: Redis is not reachable"):
        Service(make_cfg("serve.store.kind=redis", f"serve.store.url={url}").serve, load=False)
    with pytest.raises(StoreUnavailable, match=r"serve\.store\.url=redis://u:\*\*\*@127"):  # no password in errors
        RedisEventStore(f"redis://u:secret@127.0.0.1:{free_port()}/0")


def test_a_redis_that_does_not_fsync_is_refused(redis_server, prefix):
    import redis

    c = redis.Redis.from_url(redis_server.url)
    c.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(StoreUnavailable, match="appendfsync=everysec"):
            RedisEventStore(redis_server.url, key_prefix=prefix)
        RedisEventStore(redis_server.url, key_prefix=prefix, require_aof_always=False)  # stated choice
    finally:
        c.config_set("appendfsync", "always")


def test_file_store_stays_the_default(make_cfg):
    store = open_store(make_cfg().serve.store)
    assert isinstance(store, EventStore) and store.unavailable is False


def test_redis_lost_while_serving(make_client, redis_server, prefix):
    """Events 503 while Redis is down (never 202), recommendations from the replica's cache with
    degraded "store"; both recover without a restart; every acknowledged event survives the crash."""
    c, svc = make_client(*redis_overrides(redis_server, prefix))
    user = "fault-user"
    acked = []
    for item in ("SKU000007", "SKU000011"):
        r = c.post("/v1/events", json={"user_id": user, "item_id": item, "event": "view"})
        assert r.status_code == 202
        acked.append(item)
    before = c.post("/v1/recommendations", json={"user_id": user, "k": 5}).json()
    assert before["cold_start"] is False and before["degraded"] is None
    redis_server.kill()  # a crash: SIGKILL
    try:
        r = c.post("/v1/events", json={"user_id": user, "item_id": "SKU000013", "event": "view"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        down = c.post("/v1/recommendations", json={"user_id": user, "k": 5})
        assert down.status_code == 200
        body = down.json()
        assert body["degraded"] == "store" and body["cold_start"] is False  # the cached sequence
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in before["items"]]
        assert c.post("/v1/recommendations", json={"user_id": "never-seen", "k": 5}).json()["degraded"] == "store"
    finally:
        redis_server.start()
    deadline = time.monotonic() + 5
    while True:
        r = c.post("/v1/events", json={"user_id": user, "item_id": "SKU000013", "event": "view"})
        if r.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 202
    time.sleep(0.15)  # past retry_interval_s
    after = c.post("/v1/recommendations", json={"user_id": user, "k": 5}).json()
    assert after["degraded"] is None
    assert [e.item_key for e in svc.store.events_of(svc.user_key(user))] == acked + ["SKU000013"]


def test_drain_writes_the_event_log_format_exactly_once(make_cfg, redis_server, prefix, tmp_path):
    from serving.drain_events import drain, drain_batch, targets

    cfg = make_cfg(*redis_overrides(redis_server, prefix), f"serve.store.event_log={tmp_path / 'events.csv'}",
                   "serve.store.drain.batch=2", f"serve.experiments.log_dir={tmp_path / 'exp'}")
    s = RedisEventStore(redis_server.url, key_prefix=prefix)
    stamped = s.append([ev(item=f"I{i}", user=f"u{i % 2}") for i in range(5)])
    out = drain(cfg)
    assert out["drained"][f"{prefix}:events"] == 5 and s.n_events <= 1  # drained entries trimmed
    # A drain killed after writing a batch but before recording it: the next one finishes it, no duplicates.
    more = s.append([ev(user="u0", item=f"J{i}") for i in range(3)])
    import redis as redis_mod

    class Killed(Exception):
        pass

    client = redis_mod.Redis.from_url(redis_server.url, decode_responses=True)
    client.pipeline = lambda *a, **k: (_ for _ in ()).throw(Killed())  # dies right after the file write
    with pytest.raises(Killed):
        drain_batch(client, targets(cfg)[0], 2)
    assert drain(cfg)["drained"][f"{prefix}:events"] == 3  # the 2 written before the kill are recorded, not rewritten
    rows = list(csv.reader(open(tmp_path / "events.csv", encoding="utf-8")))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [r[5] for r in rows[1:]] == [e.event_id for e in stamped + more]  # each once, in order
    replay = EventStore(tmp_path / "events.csv")  # the file store reads it: the same format
    assert [e.item_key for e in replay.events_of("u0")] == ["I0", "I2", "I4", "J0", "J1", "J2"]
    assert drain(cfg)["drained"][f"{prefix}:events"] == 0


def test_rate_limit_is_shared_by_replicas(make_client, redis_server, prefix):
    over = (*redis_overrides(redis_server, prefix), "serve.auth.rate_limit_per_s=0.001", "serve.auth.burst=4")
    c1, _ = make_client(*over)
    c2, _ = make_client(*over)
    codes = [(c1 if i % 2 else c2).get("/v1/items/SKU000001/similar?k=1").status_code for i in range(8)]
    assert codes.count(200) == 4 and codes[4:] == [429] * 4  # one bucket of 4 across both replicas
    c3, _ = make_client(*over, "serve.auth.rate_limit_scope=replica")
    assert c3.get("/v1/items/SKU000001/similar?k=1").status_code == 200  # its own bucket


def test_a_recommendation_costs_one_round_trip_and_sees_the_latest_event(make_client, redis_server, prefix):
    """The user's sequence is read once per recommendation (one LRANGE), and an event accepted by another
    replica is in it. (The shared rate limit's round trips: test_leased_tokens_never_exceed_the_shared_bucket.)"""
    # a generous per-call timeout: on a loaded machine a 0.25 s timeout would count Redis as lost and answer
    # from the cache (degraded), which is another test's subject
    slow_ok = [*redis_overrides(redis_server, prefix), "serve.store.redis.timeout_s=5"]
    c1, _ = make_client(*slow_ok)
    c2, svc2 = make_client(*slow_ok)

    def calls() -> dict[str, int]:
        stats = svc2.store.client.info("commandstats")
        return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("lrange", "lindex", "llen")}

    before = calls()
    for n in range(20):
        user = f"one-trip-{n}"
        assert c1.post("/v1/events", json={"user_id": user, "item_id": "SKU000007", "event": "view"}).status_code == 202
        body = c2.post("/v1/recommendations", json={"user_id": user, "k": 3}).json()
        assert body["cold_start"] is False and body["degraded"] is None  # the other replica's event, at once
    after = calls()
    assert {c: after[c] - before[c] for c in after} == {"lrange": 20, "lindex": 0, "llen": 0}


def test_leased_tokens_never_exceed_the_shared_bucket(redis_server, prefix):
    """A busy key's tokens come in leases (fewer Redis round trips); every replica together still gets
    exactly the one bucket (a replica can be refused while another still holds a few leased tokens),
    and each refusal says how long to wait."""
    from serving.redis_store import RedisRateLimiter

    store = RedisEventStore(redis_server.url, key_prefix=prefix)
    # 0.001 token/s: nothing refills during the test; leases of up to 10 tokens (a tenth of the burst)
    a, b = (RedisRateLimiter(store.client, store.keys, 0.001, 100, lease_s=1e4) for _ in range(2))
    waits = [(a if i % 2 else b).take("key-1") for i in range(130)]
    assert waits.count(0.0) == 100 and all(w > 0 for w in waits if w != 0.0)
    assert waits[-20:] == [w for w in waits[-20:] if w > 0]  # once every lease is spent: refused
    assert a.n_calls + b.n_calls < 50  # far fewer round trips than requests (130 without leases)
    c = RedisRateLimiter(store.client, store.keys, 0.001, 100, lease_s=1e4)
    assert c.take("key-1") > 0 and c.take("key-2") == 0.0  # a third replica: the same bucket, per key


def test_unspent_lease_tokens_go_back_to_the_bucket(redis_server, prefix, monkeypatch):
    import types

    import serving.redis_store as redis_store
    from serving.redis_store import RedisRateLimiter

    clock = [1000.0]
    monkeypatch.setattr(redis_store, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    store = RedisEventStore(redis_server.url, key_prefix=prefix)
    a, b = (RedisRateLimiter(store.client, store.keys, 0.001, 100, lease_s=1e4) for _ in range(2))
    assert [a.take("k") for _ in range(4)] == [0.0] * 4  # leases of 1, 2 and 4: 7 tokens out, 3 unspent
    clock[0] += 1e4 + 1  # a's lease expired
    granted_b = 0
    while b.take("k") == 0.0:
        granted_b += 1
    assert granted_b == 93  # a still holds its 3 (no replica can spend them twice)
    granted_a = 0
    while a.take("k") == 0.0:
        granted_a += 1
    assert granted_a == 3 and 4 + granted_b + granted_a == 100  # they came back with a's next call


def test_forget_user_deletes_sequence_and_undrained_entries(redis_server, prefix):
    s = RedisEventStore(redis_server.url, key_prefix=prefix)
    s.append([ev(user="gone", item="A"), ev(user="stays", item="B"), ev(user="gone", item="C")])
    assert s.forget_user("gone") == 2
    other = RedisEventStore(redis_server.url, key_prefix=prefix)
    assert other.events_of("gone") == [] and [e.item_key for e in other.events_of("stays")] == ["B"]
    assert [f["user_key"] for _, f in s.client.xrange(s.keys.events)] == ["stays"]


def test_exposures_go_through_redis_streams(make_cfg, redis_server, prefix, tmp_path):
    from omegaconf import OmegaConf

    from serving.drain_events import drain
    from serving.experiments.exposure import Exposure, RedisExperimentLogs, open_experiment_logs

    cfg = make_cfg(*redis_overrides(redis_server, prefix), f"serve.experiments.log_dir={tmp_path / 'exp'}",
                   f"serve.store.event_log={tmp_path / 'events.csv'}")
    for mode in ("request", "interval"):
        exp_cfg = OmegaConf.merge(cfg.serve.experiments, {"fsync": mode, "fsync_interval_s": 0.05})
        logs = open_experiment_logs(exp_cfg, cfg.serve.store)
        assert isinstance(logs, RedisExperimentLogs)
        logs.log_exposure(Exposure(f"r-{mode}", "u", "u", "exp", "a", "b1", ("I1",), "2026-12-04T00:00:00+00:00",
                                   1.0, None, False))
        logs.log_attributions([("e1", f"r-{mode}", 0)])
        logs.close()
    drain(cfg)
    lines = (tmp_path / "exp" / "exposures.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["request_id"] for x in lines] == ["r-request", "r-interval"]
    assert len((tmp_path / "exp" / "attributions.jsonl").read_text().splitlines()) == 2
