"""``scripts/evaluate_experiment.py experiment=<name>`` end to end on logs written here (run as a command)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from serving.experiments.spec import read_spec
from tests.serving.experiments.test_readout import make_logs


def test_evaluate_experiment_script(tmp_path):
    spec = read_spec("conf/experiment/homepage_ab.yaml")
    make_logs(tmp_path, n=1500, spec=spec)
    with open(tmp_path / "exposures.jsonl", "a") as f:
        f.write("{broken\n")
    art = tmp_path / "art"
    out = subprocess.run([sys.executable, "scripts/evaluate_experiment.py", "experiment=homepage_ab",
                          f"paths.artifacts={art}", f"serve.experiments.log_dir={tmp_path}",
                          f"serve.store.event_log={tmp_path / 'events.csv'}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("lift", "ci_low", "ci_high", "p_value", "srm_p_value", "variants"):
        assert key in last
    assert set(last["variants"]) == {"popular", "trained"} and last["quarantined"] == {"exposures": 1}
    assert last["ci_low"] < last["lift"] < last["ci_high"]
    report = art / "reports" / "experiments" / "homepage_ab"
    assert (report / "report.html").exists() and (report / "manifest.json").exists()
    assert "sample ratio" in out.stdout
