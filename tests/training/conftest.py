"""Fixtures for the training tests: a tiny processed dataset and a composed Hydra config pointing at it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.training.tiny_data import write_tiny_processed

CONF = str(Path(__file__).resolve().parents[2] / "conf")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_processed(root / "processed", "tiny")
    write_tiny_processed(root / "processed", "tiny_noattr", with_attributes=False, with_prices=False)
    return root


@pytest.fixture
def make_cfg(tiny_artifacts, tmp_path):
    """Compose the real config with overrides, data pointing at the tiny dataset, runs under tmp_path."""

    def _make(*overrides: str, data: str = "tiny"):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose(config_name="config", overrides=[
                f"paths.artifacts={tiny_artifacts}", f"paths.runs={tmp_path / 'runs'}",
                f"paths.bundles={tmp_path / 'bundles'}", f"data.name={data}", "trainer=cpu",
                "trainer.max_epochs=3", "trainer.eval.batch_size=128", *overrides])
        return cfg

    return _make
