"""``python -m serving.run`` refuses a missing or broken bundle, or a port in use, with one line and exit
code 2, before starting Ray; SIGINT/SIGTERM (also during start-up) stop it within seconds, with its port
free and no Ray process left, and a restart on the same port is the new instance;
``python -m training.synthetic_bundle`` writes a bundle and points LATEST at it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_module(args, artifacts, repo_root):
    env = {**os.environ, "SHOPREC_ARTIFACTS": str(artifacts)}
    return subprocess.run([sys.executable, "-m", *args], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_run_refuses_missing_bundle(tmp_path, repo_root):
    r = run_module(["serving.run", "hydra.run.dir=" + str(tmp_path / "h")], tmp_path, repo_root)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("serving.run: ") and "LATEST: not found" in last


def test_synthetic_bundle_entry_point_then_broken_manifest(tmp_path):
    import pytest

    from serving.app import compose_config
    from serving.bundle import BundleError
    from serving.run import run as serve_run
    from training.synthetic_bundle import run as make_synthetic

    cfg = compose_config([f"paths.artifacts={tmp_path}", "serve.synthetic.n_items=50", "serve.synthetic.n_users=20",
                          "serve.synthetic.with_ranker=false"])
    assert make_synthetic(cfg).name == "synthetic"
    assert (tmp_path / "bundles" / "LATEST").read_text().strip() == "synthetic"
    manifest = tmp_path / "bundles" / "synthetic" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["n_items"] == 50 and "ranker.onnx" not in m["files"]
    manifest.write_text(json.dumps({**m, "schema_version": 2}))
    with pytest.raises(BundleError, match="schema_version=2"):
        serve_run(cfg)  # refused before Ray starts


# --- stopping: a real service process, signalled like Ctrl+C / a process manager --------------------
READY_LINE = "shoprec serving bundle"
STOP_WITHIN_S = 30.0  # "within seconds" on a loaded 2-core machine; about 5 s when idle


def start_service(artifacts, repo_root, port, *extra):
    import subprocess

    env = {**os.environ, "SHOPREC_ARTIFACTS": str(artifacts), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "serving.run", f"paths.artifacts={artifacts}", f"serve.port={port}",
         "serve.host=127.0.0.1", "serve.watch_interval_s=0", f"hydra.run.dir={artifacts}/hydra-{port}", *extra],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group: killpg reaches it the way Ctrl+C reaches a terminal's


def wait_for(proc, predicate, timeout_s: float, what: str) -> list[str]:
    """Read the service's output until ``predicate(line)``; its lines so far."""
    import selectors
    import time

    lines, deadline = [], time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if predicate(line):
                return lines
    raise AssertionError(f"{what} not seen within {timeout_s:.0f} s; output:\n" + "".join(lines[-40:]))


def descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def alive(procs) -> list[str]:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            pass
    return out


def answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_and_check(proc, sig, port, *, group: bool, expect_rc: int) -> float:
    """Send ``sig``; the process must exit with ``expect_rc`` within STOP_WITHIN_S, leaving no Ray
    process and a free port. Returns the seconds it took."""
    import signal
    import subprocess
    import time

    import psutil

    tree = descendants(proc.pid)
    assert any(p.name() in ("raylet", "gcs_server") for p in tree), [p.name() for p in tree]
    t0 = time.monotonic()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running {STOP_WITHIN_S:.0f} s after {signal.Signals(sig).name}:\n{out[-3000:]}")
    took = time.monotonic() - t0
    assert proc.returncode == expect_rc, out[-3000:]
    assert not answers(port), "the port still answers after the service exited"
    left = alive(tree)
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = alive(tree)
    for p in tree:  # never leave them to the next test
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"Ray processes still alive after the service exited: {left}"
    return took


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sigint_stops_within_seconds_and_a_restart_on_the_port_is_the_new_one(artifacts, repo_root):
    import json
    import signal
    import urllib.request

    from tests.serving.conftest import free_port

    port = free_port()
    first = start_service(artifacts, repo_root, port, "serve.http.debug_routes=true")
    try:
        wait_for(first, lambda line: READY_LINE in line, 240, "the first service ready")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            first_replica = r.headers["X-Replica"]
        took = stop_and_check(first, signal.SIGINT, port, group=True, expect_rc=0)
    finally:
        first.kill() if first.poll() is None else None
    assert took < STOP_WITHIN_S

    second = start_service(artifacts, repo_root, port, "serve.http.debug_routes=true")
    try:
        wait_for(second, lambda line: READY_LINE in line, 240, "the restarted service ready")
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            assert json.load(r)["status"] == "ready" and r.headers["X-Replica"] != first_replica
        stop_and_check(second, signal.SIGTERM, port, group=False, expect_rc=0)  # a process manager's stop
    finally:
        second.kill() if second.poll() is None else None


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_signal_during_start_up_stops_what_was_started(artifacts, repo_root):
    import signal
    import time

    from tests.serving.conftest import free_port

    port = free_port()
    proc = start_service(artifacts, repo_root, port)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # Ray is up, Serve not ready yet
            if any(p.name() == "raylet" for p in descendants(proc.pid)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        stop_and_check(proc, signal.SIGINT, port, group=True, expect_rc=128 + signal.SIGINT)
    finally:
        proc.kill() if proc.poll() is None else None


def test_a_port_in_use_is_refused_before_ray_starts(artifacts, repo_root):
    """A restart must never mistake an old instance (or anything else) on its port for itself."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_service(artifacts, repo_root, port)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("serving.run: ") and f"127.0.0.1:{port} is already in use" in last
    assert "Started Serve" not in out and "ray" not in last.lower()
