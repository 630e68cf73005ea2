"""Two ingress replicas on Ray Serve with the Redis store: an event accepted by one is in the next
recommendation from the other, a key's rate limit holds across both, and one scrape of Ray's metrics
agent reports both replicas (``ray_shoprec_*`` with one ``WorkerId`` each)."""
from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.ray

KEY = {"X-API-Key": "test-api-key"}
BURST = 100


@pytest.fixture(scope="module")
def redis_pair(serve_http, make_session_cfg, redis_server):
    from ray import serve

    from serving.app import build_app

    cfg = make_session_cfg("serve.ingress.num_replicas=2", "serve.ingress.num_cpus=0.1", "serve.http.debug_routes=true",
                           "serve.store.kind=redis", f"serve.store.url={redis_server.url}",
                           f"serve.store.redis.key_prefix=ray-{time.time_ns()}",
                           "serve.auth.rate_limit_per_s=0.01", f"serve.auth.burst={BURST}")
    serve.run(build_app(cfg), name="redispair", route_prefix="/redispair", blocking=False,
              logging_config={"enable_access_log": False, "log_level": "WARNING"})
    url = f"{serve_http}/redispair"
    with httpx.Client(timeout=30, trust_env=False) as c:
        seen, deadline = set(), time.monotonic() + 180
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                r = c.get(url + "/readyz")
                if r.status_code == 200:
                    seen.add(r.headers["x-replica"])
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if len(seen) < 2:
            pytest.fail(f"two replicas never answered (saw {seen})")
    yield url
    serve.delete("redispair")


def test_event_through_one_replica_is_seen_by_the_other(redis_pair):
    cross = 0
    with httpx.Client(timeout=30, trust_env=False, headers=KEY) as c:
        for n in range(3):
            user, item = f"redis-pair-user-{n}", f"SKU{10 * n + 7:06d}"
            t0 = time.monotonic()
            r = c.post(redis_pair + "/v1/events", json={"user_id": user, "item_id": item, "event": "view"})
            assert r.status_code == 202
            for i in range(4):
                out = c.post(redis_pair + "/v1/recommendations", json={"user_id": user, "k": 3})
                if i == 0:
                    assert time.monotonic() - t0 < 1.0
                body = out.json()
                assert out.status_code == 200 and body["cold_start"] is False and body["degraded"] is None
                cross += out.headers["x-replica"] != r.headers["x-replica"]
    assert cross > 0


def test_rate_limit_holds_across_replicas(redis_pair):
    codes, replicas = [], set()
    with httpx.Client(timeout=30, trust_env=False, headers={"X-API-Key": "second-key"}) as c:
        for _ in range(BURST + 10):
            r = c.get(redis_pair + "/v1/items/SKU000001/similar?k=1")
            codes.append(r.status_code)
            replicas.add(r.headers["x-replica"])
    assert len(replicas) == 2
    assert codes.count(200) == BURST and codes.count(429) == 10  # per replica it would be 2 x BURST


def test_one_scrape_reports_every_replica(redis_pair):
    import ray._private.worker as worker

    port = worker._global_node.metrics_export_port
    with httpx.Client(timeout=30, trust_env=False, headers=KEY) as c:
        replicas = {c.post(redis_pair + "/v1/recommendations", json={"user_id": f"m{i}", "k": 2}).headers["x-replica"]
                    for i in range(20)}
    assert len(replicas) == 2
    workers: set[str] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # the agents export every few seconds
        text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        workers = {m.group(1) for line in text.splitlines() if line.startswith("ray_shoprec_requests_total{")
                   and 'route="/v1/recommendations"' in line and (m := re.search(r'WorkerId="([0-9a-f]+)"', line))}
        time.sleep(1)
    assert len(workers) >= 2, "ray_shoprec_requests_total of both replicas not in one scrape"


def test_alert_rules_use_metrics_the_service_records(repo_root: Path):
    from serving.telemetry import Telemetry

    tel = Telemetry(ray_metrics=False)
    names = {m.name for m in tel.registry.collect()}
    known = set()
    for n in names:
        known |= {f"ray_{n}", f"ray_{n}_total", f"ray_{n}_bucket", f"ray_{n}_count", f"ray_{n}_sum"}
    prom = yaml.safe_load((repo_root / "conf/prometheus/prometheus.yml").read_text())
    for rule_file in prom["rule_files"]:
        path = repo_root / "conf/prometheus" / rule_file
        assert path.exists(), rule_file
    rules = yaml.safe_load((repo_root / "conf/prometheus/shoprec_alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) >= 6
    for rule in rules:
        used = set(re.findall(r"\bray_shoprec_[a-z_]+", rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)
        assert rule["labels"]["severity"] in ("critical", "warning", "info") and rule["annotations"]["summary"]
