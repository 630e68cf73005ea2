"""Fixtures of the experiment tests: spec files in a temporary folder and a service that runs them."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def spec_dict(name: str = "ab", salt: str = "salt-ab-0001", **over) -> dict:
    d = {"name": name, "salt": salt, "start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z",
         "control": "popular",
         "variants": [{"name": "popular", "weight": 0.5, "overrides": {"retrieval": "popular"}},
                      {"name": "trained", "weight": 0.5}],
         "primary_metric": {"name": "conversion", "window_hours": 24},
         "mde": {"relative": 0.2, "baseline": 0.05}}
    d.update(over)
    return d


def write_spec(folder: Path, d: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{d['name']}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture()
def exp_dir(tmp_path) -> Path:
    return tmp_path / "experiments_conf"


@pytest.fixture()
def make_exp_client(make_client, exp_dir, tmp_path):
    """``make_exp_client(*specs, overrides=()) -> (client, service)``: a service running ``specs``."""

    def make(*specs: dict, overrides: tuple[str, ...] = ()):
        for d in specs:
            write_spec(exp_dir, d)
        names = ",".join(d["name"] for d in specs)
        return make_client(f"serve.experiments.dir={exp_dir}", f"serve.experiments.active=[{names}]",
                           f"serve.experiments.log_dir={tmp_path / 'exp_logs'}",
                           "serve.experiments.watch_interval_s=0", *overrides)

    return make
