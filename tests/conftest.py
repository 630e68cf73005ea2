"""Fixtures shared by every test folder: paths, real-data location, one local Ray per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("SHOPREC_DATA_ROOT", REPO.parent / "shared" / "data"))

# Ray 2.60 turns token auth on by default; local tests run without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("SHOPREC_PSEUDO_KEY", "test-key")

# Property tests draw the same examples on every run (a test run is a verdict on the code, not on a seed);
# HYPOTHESIS_PROFILE=explore draws new ones, for looking for new failures on purpose.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session", autouse=True)
def _audit_log_in_tmp(tmp_path_factory):
    """Audit records written by tests (auth failures, reloads, forgets) go to a session folder, not artifacts/."""
    if not os.environ.get("SHOPREC_AUDIT_LOG"):
        os.environ["SHOPREC_AUDIT_LOG"] = str(tmp_path_factory.mktemp("audit") / "audit.jsonl")
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The public datasets (../shared/data). Real-data tests need them; CI has them."""
    if not DATA_ROOT.exists():
        pytest.skip(f"real data not found at {DATA_ROOT}")
    return DATA_ROOT


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real ``redis-server`` (appendonly yes, appendfsync always) on a free loopback port for the
    session: ``.url``, ``.port``, ``.kill()`` (a crash), ``.start()``, ``.restart()`` (serving.redis_local).
    Tests share it: give each test its own ``serve.store.redis.key_prefix``."""
    from serving.redis_local import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (Ray listens on fixed ports)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=True,
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort teardown
        pass
    ray.shutdown()
