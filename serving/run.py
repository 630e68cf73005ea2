"""Start the recommendation service: ``python -m serving.run [serve.port=8000] [bundle=FOLDER]``.

Starts a local Ray instance (no dashboard, small object store), Ray Serve's HTTP proxy on
``serve.host``:``serve.port`` and the app of ``serving.app``, loading ``bundle`` or the bundle named
in ``${paths.bundles}/LATEST``. It checks the bundle before starting Ray (a one-line error and exit
code 2 when it is missing or broken), waits until ``/readyz`` is ready, prints the URL, and serves
until SIGINT/SIGTERM, then shuts Serve and Ray down.

The same app under the Ray CLI: ``serve run conf/serve/serve_config.yaml``.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from serving.bundle import BundleError, read_manifest, resolve_bundle_dir

log = logging.getLogger("serving.run")


@dataclass
class Started:
    url: str
    bundle: str
    seconds: float


def start(cfg: DictConfig, *, wait_ready_s: float = 120.0) -> Started:
    """Start Ray + Serve + the app (returns once ``/readyz`` answers 200)."""
    import ray
    from ray import serve

    from serving.app import build_app

    t0 = time.perf_counter()
    s = cfg.serve
    bundle_dir = resolve_bundle_dir(s.bundle_path, s.bundles_dir)
    read_manifest(bundle_dir)  # fail fast, before Ray starts
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=s.ray.num_cpus, include_dashboard=bool(s.ray.include_dashboard),
                 object_store_memory=int(s.ray.object_store_memory), logging_level="WARNING",
                 configure_logging=True)
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
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def run(cfg: DictConfig) -> Started:
    """Start, then block until SIGINT/SIGTERM."""
    started = start(cfg)
    print(f"shoprec serving bundle {started.bundle} at {started.url} (ready in {started.seconds:.1f} s)", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    print("shoprec: shutting down", flush=True)
    stop()
    return started


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (BundleError, ValueError, TimeoutError) as e:
        import ray

        if ray.is_initialized():  # it failed after Ray started: leave nothing running
            try:
                stop()
            except Exception:  # noqa: BLE001 - best effort
                pass
        print(f"serving.run: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
