"""``scripts/bench_experiment.py --data taobao`` end to end on the real Taobao sample (run as commands:
prepare, a one-epoch two-tower, export, then the replay)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(args: list[str], env: dict, timeout: int = 600) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_experiment_replays_taobao(tmp_path, data_root):
    art = tmp_path / "art"
    env = {**os.environ, "SHOPREC_PSEUDO_KEY": "bench-test-key", "SHOPREC_ARTIFACTS": str(art),
           "SHOPREC_DATA_ROOT": str(data_root), "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    common = [f"paths.artifacts={art}", f"paths.data_root={data_root}"]
    _run(["-m", "features.prepare", "data=taobao", *common], env)
    run_dir = tmp_path / "run"
    _run(["-m", "training.train", "model=two_tower", "data=taobao", "trainer=cpu", "trainer.eval.split=temporal",
          "trainer.max_epochs=1", f"trainer.run_dir={run_dir}", *common], env)
    _run(["-m", "training.export", f"run={run_dir}", *common], env)
    bundle = (art / "bundles" / "LATEST").read_text().strip()
    stdout = _run(["scripts/bench_experiment.py", "--data", "taobao", "--artifacts", str(art), "--bundle", bundle,
                   "--data-root", str(data_root), "--max-users", "60", "--aa-readouts", "20",
                   "--timing-users", "10"], env)
    last = json.loads(stdout.strip().splitlines()[-1])         # strict JSON: no NaN even with no conversion
    assert last["data"] == "taobao" and last["users"] == 60 and last["convert_events"] == ["cart", "purchase"]
    assert sum(v["users"] for v in last["ab_variants"].values()) == 60
    assert set(last["ab_variants"]) == {"popular", "trained"}
    assert last["aa_readouts"] == 20 and 0.0 <= last["aa_false_positive_rate"] <= 1.0
    assert isinstance(last["ab_true_lift_in_ci"], bool) and 0.0 <= last["ab_srm_p_value"] <= 1.0
    assert last["ab_planned_users_per_variant"] > 0 and last["overhead_p50_ratio"] > 0
    assert "replayed users (Taobao temporal test period)" in stdout
