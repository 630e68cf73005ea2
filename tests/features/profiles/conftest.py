"""Fixtures for the profile tests (helpers in ``toydata.py``)."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from tests.features.profiles.toydata import compose_cfg, make_toy

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def toy() -> dict[str, pd.DataFrame]:
    return make_toy()


@pytest.fixture
def pcfg():
    """The default ``profile`` config group as a plain dict (fresh per test)."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(["paths.artifacts=/tmp/unused"])
    return OmegaConf.to_container(cfg.profile, resolve=True)


