"""``python -m serving.run`` refuses a missing or broken bundle with one line and exit code 2, before
starting Ray; ``python -m training.synthetic_bundle`` writes a bundle and points LATEST at it."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run_module(args, artifacts, repo_root):
    env = {**os.environ, "SHOPREC_ARTIFACTS": str(artifacts)}
    return subprocess.run([sys.executable, "-m", *args], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_run_refuses_missing_bundle(tmp_path, repo_root):
    r = run_module(["serving.run", "hydra.run.dir=" + str(tmp_path / "h")], tmp_path, repo_root)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("serving.run: ") and "LATEST: not found" in last


def test_synthetic_bundle_entry_point_then_broken_manifest(tmp_path):
    import pytest

    from serving.app import compose_config
    from serving.bundle import BundleError
    from serving.run import run as serve_run
    from training.synthetic_bundle import run as make_synthetic

    cfg = compose_config([f"paths.artifacts={tmp_path}", "serve.synthetic.n_items=50", "serve.synthetic.n_users=20",
                          "serve.synthetic.with_ranker=false"])
    assert make_synthetic(cfg).name == "synthetic"
    assert (tmp_path / "bundles" / "LATEST").read_text().strip() == "synthetic"
    manifest = tmp_path / "bundles" / "synthetic" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["n_items"] == 50 and "ranker.onnx" not in m["files"]
    manifest.write_text(json.dumps({**m, "schema_version": 2}))
    with pytest.raises(BundleError, match="schema_version=2"):
        serve_run(cfg)  # refused before Ray starts
