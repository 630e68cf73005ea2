"""Start the recommendation service: ``python -m serving.run [serve.port=8000] [bundle=FOLDER]``.

Starts a local Ray instance of its own (no dashboard, small object store; with ``RAY_ADDRESS`` set it
joins that cluster instead), Ray Serve's HTTP proxy on ``serve.host``:``serve.port`` and the app of
``serving.app``, loading ``bundle`` or the bundle named in ``${paths.bundles}/LATEST``. Before
starting Ray it checks the bundle and that nothing listens on the port already (a one-line error and
exit code 2 otherwise: a restart must never find an old instance answering in its place). It waits
until ``/readyz`` is ready, prints the URL, and serves until SIGINT/SIGTERM.

Stopping (``stop``): Serve is shut down (the proxy closes the port first), then Ray, each within a
time limit; Ray processes of this instance still alive after that are terminated, then killed. A
signal during start-up stops what was started the same way and exits with 128 + the signal number.

The same app under the Ray CLI, with autoscaling and health checks, on a local Ray or an existing
cluster: ``serve run deploy/serve_config.yaml`` / ``serve deploy deploy/serve_config.yaml`` (KubeRay:
``deploy/kuberay/rayservice.yaml``; guide in ``docs/cluster.md``). A new bundle version reaches the
running replicas through the ingress's ``user_config``: ``python -m serving.app VERSION``.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import hydra
from omegaconf import DictConfig

from serving.bundle import BundleError, read_manifest, resolve_bundle_dir

log = logging.getLogger("serving.run")

SERVE_SHUTDOWN_TIMEOUT_S = 15.0
RAY_SHUTDOWN_TIMEOUT_S = 15.0
KILL_GRACE_S = 3.0


@dataclass
class Started:
    url: str
    bundle: str
    seconds: float


@dataclass
class _Instance:
    """What ``start`` started, so that ``stop`` can clean it up whatever state it is in."""

    active: bool = False    # start() got past its checks: Ray/Serve may be running
    own_ray: bool = False
    session_dir: str | None = None
    pids: set[int] = field(default_factory=set)


_INSTANCE = _Instance()


class PortInUse(RuntimeError):
    """Something already listens on ``serve.host``:``serve.port``."""


def check_port_free(host: str, port: int) -> None:
    """``PortInUse`` when ``host``:``port`` cannot be bound (another process serves there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(f"{host}:{port} is already in use (another service, or one still stopping): "
                                f"stop it or choose another serve.port") from None
            raise


def start(cfg: DictConfig, *, wait_ready_s: float = 120.0, on_ray_started=None) -> Started:
    """Start Ray + Serve + the app (returns once ``/readyz`` answers 200)."""
    import ray
    from ray import serve

    from serving.app import build_app

    t0 = time.perf_counter()
    s = cfg.serve
    bundle_dir = resolve_bundle_dir(s.bundle_path, s.bundles_dir)
    read_manifest(bundle_dir)  # fail fast, before Ray starts
    check_port_free(str(s.host), int(s.port))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    _INSTANCE.active = True
    if not ray.is_initialized():
        joining = bool(os.environ.get("RAY_ADDRESS"))
        _INSTANCE.own_ray = not joining
        ray.init(address=None if joining else "local", num_cpus=None if joining else s.ray.num_cpus,
                 include_dashboard=bool(s.ray.include_dashboard),
                 object_store_memory=None if joining else int(s.ray.object_store_memory),
                 logging_level="WARNING", configure_logging=True)
        if _INSTANCE.own_ray:
            _INSTANCE.session_dir = _session_dir()
            _INSTANCE.pids |= _descendants()
        if on_ray_started is not None:
            on_ray_started()  # ray.init replaces the SIGTERM handler
    logging_config = {"enable_access_log": bool(s.http.access_log), "log_level": "WARNING"}
    serve.start(http_options={"host": str(s.host), "port": int(s.port)}, logging_config=logging_config)
    serve.run(build_app(cfg), name=str(s.app_name), route_prefix=str(s.route_prefix), blocking=False,
              logging_config=logging_config)
    url = f"http://{s.host}:{s.port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    deadline = time.monotonic() + wait_ready_s
    while time.monotonic() < deadline:
        try:
            with opener.open(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return Started(url, bundle_dir.name, time.perf_counter() - t0)
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz not ready after {wait_ready_s:.0f} s (see the Ray logs under /tmp/ray)")


def stop() -> None:
    """Shut Serve and Ray down (each within a time limit), then end what is left of this Ray instance."""
    import ray

    if _INSTANCE.own_ray:
        _INSTANCE.pids |= _descendants()
    if ray.is_initialized():
        _with_timeout(_serve_shutdown, SERVE_SHUTDOWN_TIMEOUT_S, "serve.shutdown")
        _with_timeout(ray.shutdown, RAY_SHUTDOWN_TIMEOUT_S, "ray.shutdown")
    if _INSTANCE.own_ray:
        _end_processes(_INSTANCE.pids | _session_processes(_INSTANCE.session_dir))
    _INSTANCE.active, _INSTANCE.own_ray, _INSTANCE.session_dir, _INSTANCE.pids = False, False, None, set()


def _serve_shutdown() -> None:
    from ray import serve

    serve.shutdown()


def _with_timeout(fn, seconds: float, what: str) -> None:
    errors: list[BaseException] = []

    def call():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below; stopping goes on
            errors.append(e)

    t = threading.Thread(target=call, name=what, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        log.warning("%s did not finish within %.0f s: ending the processes instead", what, seconds)
    elif errors:
        log.warning("%s failed (%s): ending the processes instead", what, errors[0])


def _session_dir() -> str | None:
    try:
        from ray._private import worker

        node = worker._global_node
        return None if node is None else str(node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - a private API: without it, the process tree still finds them
        return None


def _descendants() -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _session_processes(session_dir: str | None) -> set[int]:
    """Processes whose command line names this instance's session folder (Ray's agents and workers,
    also those whose parent died first)."""
    import psutil

    if not session_dir:
        return set()
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(session_dir in part for part in (p.info["cmdline"] or ())):
                found.add(p.info["pid"])
        except psutil.Error:
            continue
    return found


def _end_processes(pids: set[int]) -> None:
    import psutil

    procs = []
    for pid in pids - {os.getpid()}:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    alive = [p for p in procs if _running(p)]
    if not alive:
        return
    log.warning("ending %d Ray process(es) left after shutdown: %s", len(alive), sorted(p.pid for p in alive))
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=KILL_GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=KILL_GRACE_S)


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Interrupted(BaseException):  # like KeyboardInterrupt: no `except Exception` on the way swallows it
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run(cfg: DictConfig) -> Started:
    """Start, then block until SIGINT/SIGTERM; stop in every case (also when start-up fails)."""
    stopping = threading.Event()
    phase = {"starting": True, "signum": 0}

    def on_signal(signum, _frame):
        phase["signum"] = phase["signum"] or signum
        stopping.set()
        if phase["starting"]:
            phase["starting"] = False  # raise once; a second signal while stopping is ignored
            raise _Interrupted(signum)

    def install():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    install()
    try:
        started = start(cfg, on_ray_started=install)
        phase["starting"] = False
        print(f"shoprec serving bundle {started.bundle} at {started.url} (ready in {started.seconds:.1f} s)",
              flush=True)
        while not stopping.wait(1.0):
            pass
        print(f"shoprec: {signal.Signals(phase['signum']).name}: shutting down", flush=True)
        return started
    except BaseException as e:
        if phase["signum"] and not isinstance(e, _Interrupted):
            # raised inside a C extension, the signal's exception comes out as another one (SystemError)
            raise _Interrupted(phase["signum"]) from e
        raise
    finally:
        phase["starting"] = False
        try:
            if _INSTANCE.active:
                t0 = time.perf_counter()
                stop()
                if stopping.is_set():
                    print(f"shoprec: stopped in {time.perf_counter() - t0:.1f} s", flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except _Interrupted as e:
        print(f"serving.run: {e} while starting: stopped", file=sys.stderr)
        sys.exit(128 + e.signum)
    except (BundleError, PortInUse, ValueError, TimeoutError) as e:
        print(f"serving.run: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
