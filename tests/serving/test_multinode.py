"""The service and the audience job on a real two-node Ray cluster on this host: a head and a worker node
started with ``ray start`` (two raylets, 1 CPU each, custom resources ``node_a`` / ``node_b``, their own ports
and temp dirs), Redis as the online store (``serve.store.kind=redis``).

Two ingress applications of the same service share one Redis (same ``key_prefix``): ``/mn_a`` has its one
replica on node A, ``/mn_b`` on node B (``serve.ingress.resources``). Ray Serve runs an HTTP proxy on each
node (``proxy_location: EveryNode``); the worker node's proxy gets its own port (``RAY_SERVE_WORKER_PROXY_HTTP_PORT``
in that node's environment: on one host both would otherwise share the port through ``SO_REUSEPORT`` and the
kernel would pick the node). Each application is called through its own node's proxy, and each answer names
its node (``X-Ray-Node``, debug routes), so the tests check where they were served. Asserted:

- an event accepted on node A is in the next recommendation served on node B within a second (and back);
- one API key's rate limit holds across both nodes (the token bucket lives in Redis);
- killing node B's replica (``ray.kill``) loses no accepted (202) event: all are in the drained event log,
  and Serve brings the replica back on node B;
- the Ray Data audience job (``build_audience_ray``) on the two nodes equals the local audience.

The cluster is reached through a driver process (``tests/serving/multinode_driver.py``): this process may
already hold the session's local Ray. The service is deployed as soon as both nodes are up, and the audience
job (first in this file) runs while its replicas load. Stopping: SIGTERM to each ``ray start --block`` (a
plain ``ray stop`` would stop every Ray on the host), then SIGKILL of each node's process group.
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pandas as pd
import pytest

from tests.serving.conftest import GENEROUS_BUDGETS

pytestmark = [pytest.mark.multinode, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
RAY_CLI = shutil.which("ray", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
KEYS = {"read": "mn-read-key", "limit": "mn-limit-key", "kill": "mn-kill-key"}   # one token bucket each
APPS = {"mn_a": "node_a", "mn_b": "node_b"}   # application (route /<app>) -> the node resource of its replica
BURST = 60
START_TIMEOUT_S = 60


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once: a port closed and bound again can come back)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class RayNode:
    """One ``ray start --block`` process: the leader of its own process group (the node's processes)."""

    resource: str
    proc: subprocess.Popen
    log: Path

    def wait_up(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({self.resource}) did not come up:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)


def start_node(root: Path, resource: str, gcs_port: int, head: bool, ports: Iterator[int],
               env_vars: dict[str, str] | None = None) -> RayNode:
    """``ray start --block`` of one node, a port of ``ports`` for every port option (it does not wait:
    ``wait_up``). The head's GCS listens on ``gcs_port``; a worker node connects to it (and waits for it).
    ``env_vars``: the node's environment (every process and actor on it) on top of this one's."""
    args = [RAY_CLI, "start", "--block", "--num-cpus=1", f'--resources={{"{resource}": 1}}',
            f"--temp-dir={root / resource}", "--object-store-memory=100000000", "--disable-usage-stats",
            f"--node-manager-port={next(ports)}", f"--object-manager-port={next(ports)}",
            "--min-worker-port=0", "--max-worker-port=0",   # 0: each worker binds a port the OS picks
            f"--dashboard-agent-listen-port={next(ports)}", f"--dashboard-agent-grpc-port={next(ports)}",
            f"--metrics-export-port={next(ports)}", f"--runtime-env-agent-port={next(ports)}",
            "--include-log-monitor=false"]
    if head:
        args += ["--head", f"--port={gcs_port}", f"--ray-client-server-port={next(ports)}",
                 "--include-dashboard=false", f"--dashboard-port={next(ports)}"]
    else:
        args += [f"--address=127.0.0.1:{gcs_port}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled", **(env_vars or {}))
    log = root / f"{resource}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
    return RayNode(resource, proc, log)


def stop_nodes(nodes: list[RayNode], grace_s: float = 2.0) -> None:
    """SIGTERM to each ``ray start --block`` (its node drains and stops), then SIGKILL of each node's process
    group (whatever is left: workers, agents)."""
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        try:
            node.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for node in nodes:
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.proc.wait()


class Driver:
    """``tests/serving/multinode_driver.py`` in its own process: ``ask(cmd, **args)`` -> its JSON answer."""

    def __init__(self, address: str, log: Path):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(SHOPREC_API_KEYS=",".join(KEYS.values()), RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
        self.log = log
        self._err = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.serving.multinode_driver", address],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
                                     cwd=REPO, text=True)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("MULTINODE "):
                self._answers.put(line[len("MULTINODE "):])

    def ask(self, cmd: str, timeout_s: float = 120, **args) -> dict:
        assert self.proc.poll() is None, f"the driver exited ({self.proc.returncode}):\n{self.tail()}"
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            answer = json.loads(self._answers.get(timeout=timeout_s))
        except queue.Empty:
            raise AssertionError(f"driver: no answer to {cmd} in {timeout_s} s:\n{self.tail()}") from None
        assert "error" not in answer, answer["error"]
        return answer

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def quit(self) -> None:
        """Ask the driver to leave (``wait`` for it)."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass

    def wait(self, timeout_s: float = 10) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@dataclass
class Cluster:
    address: str
    driver: Driver
    node_ids: dict[str, str]          # resource (node_a, node_b) -> Ray node id
    http_ports: dict[str, int]        # resource -> the port of that node's Serve HTTP proxy
    service_overrides: list[str]      # the config both applications of the service run with


def service_overrides(bundles_root: Path, redis_url: str) -> list[str]:
    return [f"paths.artifacts={bundles_root}", "serve.watch_interval_s=0", *GENEROUS_BUDGETS,
            "serve.http.debug_routes=true", "serve.ingress.num_cpus=0",   # the CPUs stay for Ray Data
            "serve.store.kind=redis", f"serve.store.url={redis_url}",
            f"serve.store.redis.key_prefix=mn-{time.time_ns()}", "serve.auth.rate_limit_scope=cluster",
            "serve.auth.rate_limit_per_s=0.01", f"serve.auth.burst={BURST}",
            "serve.ingress.health_check_period_s=1"]   # a killed replica is noticed (and replaced) sooner


@pytest.fixture(scope="module")
def cluster(request):
    """The two nodes, the driver, and the service deployed on them (not waited for: ``service`` waits, and
    the audience job, first in this file, runs while the replicas load)."""
    if RAY_CLI is None:
        pytest.skip("the ray command line (ray start) is not installed")
    if shutil.which(os.environ.get("SHOPREC_REDIS_SERVER", "redis-server")) is None:
        pytest.skip("redis-server is not installed")
    root = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))   # short: Ray's unix socket paths live under it
    gcs_port, http_a, http_b, *ports = free_ports(18)
    http_ports = {"node_a": http_a, "node_b": http_b}
    nodes: list[RayNode] = []
    driver = None
    try:
        nodes.append(start_node(root, "node_a", gcs_port, head=True, ports=iter(ports[:8])))
        nodes.append(start_node(root, "node_b", gcs_port, head=False, ports=iter(ports[8:]),   # waits for the GCS
                                env_vars={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(http_b)}))
        # the session's bundles and Redis (requested here, after the skips): built while the nodes start
        bundles_root, redis = request.getfixturevalue("bundles_root"), request.getfixturevalue("redis_server")
        nodes[0].wait_up()
        address = f"127.0.0.1:{gcs_port}"
        driver = Driver(address, root / "driver.log")   # connects while the worker node comes up
        nodes[1].wait_up()
        node_ids = driver.ask("nodes")
        assert set(node_ids) == {"node_a", "node_b"} and len(set(node_ids.values())) == 2, node_ids
        overrides = service_overrides(bundles_root, redis.url)
        driver.ask("deploy", http_port=http_a, apps=APPS, overrides=overrides, wait=False)
        yield Cluster(address, driver, node_ids, http_ports, overrides)
    finally:
        if driver is not None:
            driver.quit()
        stop_nodes(nodes)
        if driver is not None:
            driver.wait()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class TwoNodeService:
    urls: dict[str, str]              # application -> its URL through the proxy of its replica's node
    cluster: Cluster


@pytest.fixture(scope="module")
def service(cluster):
    """Both applications answering, each through its own node's proxy."""
    urls = {app: f"http://127.0.0.1:{cluster.http_ports[resource]}/{app}" for app, resource in APPS.items()}
    with httpx.Client(timeout=10, trust_env=False) as c:
        for app, resource in APPS.items():
            r = _ready(c, urls[app])
            assert r.headers["x-ray-node"] == cluster.node_ids[resource], app
    return TwoNodeService(urls, cluster)


def _ready(c: httpx.Client, url: str, timeout_s: float = 120) -> httpx.Response:
    """``/readyz`` answered 200 (the replica loaded its bundle; a worker node's proxy starts once the node
    has a replica)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = c.get(url + "/readyz")
            if r.status_code == 200 or time.monotonic() > deadline:
                assert r.status_code == 200, (url, r.status_code, r.text)
                return r
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_the_audience_job_on_two_nodes_equals_the_local_one(cluster, tmp_path):
    from omegaconf import OmegaConf

    from serving.campaigns.audience import build_audience, model_scorer
    from serving.campaigns.scoring import save_campaign_model
    from serving.campaigns.spec import parse_campaign
    from serving.campaigns.synthetic import synthetic_profiles
    from tests.serving.campaigns.conftest import make_cfg, tiny_model
    from tests.serving.campaigns.test_ray_audience import _assert_same_audience

    campaign = parse_campaign(OmegaConf.to_container(make_cfg("campaign=winback").campaign, resolve=True))
    campaign = campaign.replace(job={"batch_size": 4000, "device": "cpu"})
    profiles = synthetic_profiles(20_000, seed=1)
    model = tiny_model(campaign.model.features, seed=3)
    save_campaign_model(tmp_path / "model", model.ensemble, model.features, "response")
    files = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    half = len(profiles) // 2
    profiles.iloc[:half].to_parquet(files[0], index=False, row_group_size=4000)
    profiles.iloc[half:].to_parquet(files[1], index=False, row_group_size=4000)
    contacts = set(profiles["user_key"].astype(str).iloc[::7])
    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps({"profiles_path": [str(f) for f in files], "campaign": campaign,
                                  "model_dir": str(tmp_path / "model"), "out_dir": str(tmp_path / "audience"),
                                  "recent_contacts": contacts, "concurrency": 1}))
    remote = cluster.driver.ask("audience", job=str(job), timeout_s=180)
    local = build_audience(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), campaign,
                           model_scorer(model, "cpu"), recent_contacts=contacts)
    on_disk = pd.read_parquet(tmp_path / "audience")
    assert remote["steps"] == local.steps and remote["n_rows"] == len(on_disk) == len(local.audience)
    assert remote["send_date"] == local.send_date
    _assert_same_audience(on_disk, local.audience)


def _recommendation_reflects(c: httpx.Client, url: str, user: str, item: str) -> httpx.Response | None:
    out = c.post(url + "/v1/recommendations", json={"user_id": user, "k": 3})
    assert out.status_code == 200, out.text
    body = out.json()
    if body["cold_start"] is False and body["items"] and all(item in i["reason"] for i in body["items"]):
        return out
    return None


def test_an_event_on_one_node_is_in_the_next_recommendation_on_the_other(service):
    nodes = service.cluster.node_ids
    with httpx.Client(timeout=10, trust_env=False, headers={"X-API-Key": KEYS["read"]}) as c:
        for n, (src, dst) in enumerate([("mn_a", "mn_b"), ("mn_b", "mn_a"), ("mn_a", "mn_b")]):
            user, item = f"mn-user-{time.time_ns()}-{n}", f"SKU{10 * n + 7:06d}"
            t0 = time.monotonic()
            r = c.post(f"{service.urls[src]}/v1/events", json={"user_id": user, "item_id": item, "event": "view"})
            assert r.status_code == 202, r.text
            seen = None
            while seen is None and time.monotonic() - t0 < 1.0:
                seen = _recommendation_reflects(c, service.urls[dst], user, item)
                if seen is None:
                    time.sleep(0.05)
            assert seen is not None, f"event accepted on {src} not in {dst}'s recommendation within 1 s"
            assert r.headers["x-ray-node"] == nodes[APPS[src]]
            assert seen.headers["x-ray-node"] == nodes[APPS[dst]] != r.headers["x-ray-node"]


def test_one_keys_rate_limit_holds_across_both_nodes(service):
    codes: dict[str, list[int]] = {"mn_a": [], "mn_b": []}
    with httpx.Client(timeout=10, trust_env=False, headers={"X-API-Key": KEYS["limit"]}) as c:
        for i in range(BURST + 10):   # alternately on node A and node B
            app = "mn_a" if i % 2 == 0 else "mn_b"
            codes[app].append(c.get(f"{service.urls[app]}/v1/items/SKU000001/similar?k=1").status_code)
    every = codes["mn_a"] + codes["mn_b"]
    assert every.count(200) == BURST and every.count(429) == 10, codes   # per node it would be 2 x BURST
    assert 429 in codes["mn_a"] and 429 in codes["mn_b"]   # each node refused after serving half the burst


def test_killing_the_replica_on_node_b_loses_no_accepted_event(service, tmp_path):
    """Runs last in this file: it replaces node B's replica."""
    from serving.app import compose_config
    from serving.drain_events import drain

    url, node_b = service.urls["mn_b"], service.cluster.node_ids["node_b"]
    tag = f"mn-kill-{time.time_ns()}"
    answers: list[tuple[str, int | None, str | None, str | None]] = []   # (item_id, status, x-replica, x-ray-node)
    stop = threading.Event()

    def post_events() -> None:
        with httpx.Client(timeout=30, trust_env=False, headers={"X-API-Key": KEYS["kill"]}) as c:
            for n in range(BURST - 5):
                if stop.is_set():
                    return
                item = f"{tag}-{n}"
                try:
                    r = c.post(url + "/v1/events", json={"user_id": f"{tag}-user", "item_id": item, "event": "view"})
                    answers.append((item, r.status_code, r.headers.get("x-replica"), r.headers.get("x-ray-node")))
                except httpx.HTTPError:
                    answers.append((item, None, None, None))
                time.sleep(0.02)

    def accepted() -> list[tuple[str, int | None, str | None, str | None]]:
        return [a for a in list(answers) if a[1] == 202]

    poster = threading.Thread(target=post_events, daemon=True)
    poster.start()
    try:
        deadline = time.monotonic() + 30
        while len(accepted()) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(accepted()) >= 10, answers
        first_replica = accepted()[0][2]
        killed = service.cluster.driver.ask("kill", app="mn_b")["killed"]
        assert len(killed) == 1, killed
        deadline = time.monotonic() + 60   # Serve starts another replica on node B (it loads the bundle)
        while sum(a[2] != first_replica for a in accepted()) < 3 and poster.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        poster.join(60)
    ok = accepted()
    assert sum(a[2] != first_replica for a in ok) >= 3, f"no replacement replica answered: {answers}"
    assert {a[3] for a in ok} == {node_b}   # before and after the kill, on node B
    with httpx.Client(timeout=10, trust_env=False) as c:
        assert _ready(c, url).headers["x-ray-node"] == node_b   # back on node B

    cfg = compose_config([*service.cluster.service_overrides, f"serve.store.event_log={tmp_path / 'events.csv'}",
                          f"serve.experiments.log_dir={tmp_path / 'experiments'}"])
    drain(cfg)
    logged = pd.read_csv(tmp_path / "events.csv", dtype=str)
    missing = {a[0] for a in ok} - set(logged["item_key"])
    assert not missing, f"accepted (202) but not in the event log: {sorted(missing)}"
