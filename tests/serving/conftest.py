"""Fixtures of the serving tests: one synthetic bundle per session, a config composer, and an
in-process (no Ray) app client. Ray tests use the root ``ray_local`` fixture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
API_KEY = "test-api-key"
ADMIN_KEY = "test-admin-key"
# Stage budgets large enough that a busy shared CI machine never degrades an answer by accident;
# tests of the degraded path set their own.
GENEROUS_BUDGETS = ("serve.budget_ms.retrieve=2000", "serve.budget_ms.rank=2000", "serve.budget_ms.rules=2000")


@pytest.fixture(scope="session", autouse=True)
def _serving_env():
    import torch

    torch.set_num_threads(1)
    os.environ["SHOPREC_API_KEYS"] = f"{API_KEY},second-key"
    os.environ["SHOPREC_ADMIN_KEYS"] = ADMIN_KEY
    yield


@pytest.fixture(scope="session")
def bundles_root(tmp_path_factory) -> Path:
    """``<artifacts>`` with ``bundles/b1`` (LATEST) and ``bundles/b2`` (another seed) built once."""
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle

    art = tmp_path_factory.mktemp("artifacts")
    build_synthetic_bundle(art / "bundles" / "b2", SyntheticBundleSpec(seed=1), write_latest=False)
    build_synthetic_bundle(art / "bundles" / "b1", SyntheticBundleSpec(seed=0), write_latest=True)
    return art


@pytest.fixture()
def artifacts(bundles_root, tmp_path) -> Path:
    """A fresh artifacts folder per test whose bundles/ links to the session's bundles."""
    (tmp_path / "bundles").mkdir()
    for b in ("b1", "b2"):
        (tmp_path / "bundles" / b).symlink_to(bundles_root / "bundles" / b)
    (tmp_path / "bundles" / "LATEST").write_text("b1\n")
    return tmp_path


@pytest.fixture()
def make_cfg(artifacts):
    """``make_cfg(*overrides)``: the composed root config on the test's artifacts folder."""
    from serving.app import compose_config

    def make(*overrides: str):
        return compose_config([f"paths.artifacts={artifacts}", "serve.watch_interval_s=0",
                               "serve.http.debug_routes=true", *GENEROUS_BUDGETS, *overrides])

    return make


@pytest.fixture(scope="session")
def make_session_cfg(bundles_root):
    """Like ``make_cfg`` on the session's artifacts folder (for module-scoped Ray apps)."""
    from serving.app import compose_config

    def make(*overrides: str):
        return compose_config([f"paths.artifacts={bundles_root}", "serve.watch_interval_s=0", *GENEROUS_BUDGETS,
                               *overrides])

    return make


@pytest.fixture()
def make_client(make_cfg):
    """``make_client(*overrides) -> (TestClient, Service)`` over the in-process app (no Ray)."""
    from fastapi.testclient import TestClient

    from serving.api import create_app
    from serving.service import Service

    made = []

    def make(*overrides: str, load: bool = True):
        svc = Service(make_cfg(*overrides).serve, load=load, background=False)
        made.append(svc)
        return TestClient(create_app(svc), headers={"X-API-Key": API_KEY}), svc

    yield make
    for s in made:
        s.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_http(ray_local):
    """Ray Serve's HTTP proxy on a free loopback port (started once); yields the base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    yield f"http://127.0.0.1:{port}"
