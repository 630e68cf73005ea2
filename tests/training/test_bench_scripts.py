"""scripts/bench_train.py runs its speed variants and prints a JSON last line (bench_quality: test_bench_quality.py).
The script runs as a command, as a user runs it (tests import no script)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench_train(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_train_fast_preset_runs_every_variant(tiny_artifacts, tmp_path):
    """Every speed variant trains on the tiny data (torch.compile left out here: ~50 s of compilation on this CPU)."""
    names = [n for n in bench_train("--list")["variants"] if "compile" not in n]
    tiny = [f"paths.artifacts={tiny_artifacts}", f"paths.runs={tmp_path}", "data.name=tiny", "model.hidden=16",
            "model.blocks=1", "model.heads=1", "model.use_attributes=false"]
    last = bench_train("--preset", "fast", "--only", ",".join(names), "--trainer", "cpu", "--data", "online_retail",
                       *tiny, "trainer.max_epochs=2", "trainer.eval.valid_max_users=100")
    assert list(last["variants"]) == ["plain", *names] and last["target_valid_ndcg@10"] > 0
    for name, r in last["variants"].items():
        assert r["epochs"] >= 1 and r["valid_ndcg@10"] is not None, name
        assert r["valid_epoch_users"] == 100                    # cheap validation: a 100-user subset of 300
    assert last["variants"]["plain"]["reaches_target"] is True
    # a given target skips the plain baseline; variants stop once the per-epoch valid NDCG@10 reaches it
    out = bench_train("--preset", "fast", "--only", "defaults", "--target", "0.0", "--trainer", "cpu",
                      "--data", "online_retail", *tiny, "trainer.max_epochs=3")
    r = out["variants"]["defaults"]
    assert list(out["variants"]) == ["defaults"] and r["epochs"] == 1 and r["stop_reason"] == "target_reached"
