"""Fixtures for the data-layer tests: composed configs and datasets prepared once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[2]
CONF = str(REPO / "conf")

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_cfg(*overrides: str):
    """The root config composed with ``overrides`` (as on the command line)."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory, data_root) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def prepare_real(prepared_root, data_root):
    """prepare_real(name, *overrides) -> PrepareResult, cached per session."""
    from features.prepare import run

    cache: dict = {}

    def _prepare(name: str, *overrides: str):
        key = (name, overrides)
        if key not in cache:
            cfg = make_cfg(f"data={name}", f"paths.artifacts={prepared_root}", f"paths.data_root={data_root}",
                           "force=true", *overrides)
            cache[key] = run(cfg)
        return cache[key]

    return _prepare
