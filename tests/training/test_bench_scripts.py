"""scripts/bench_quality.py picks runs by validation; scripts/bench_train.py runs its speed variants; both print a JSON last line."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bench_quality  # noqa: E402


def _run(root, data, model, run, valid, test, **extra):
    d = root / data / model / run
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"valid/ndcg@10": valid, "test/ndcg@10": test, "test/hr@10": 2 * test,
                                                "data": data, "model": model, **extra}))


def test_bench_quality_selects_by_valid_and_ends_with_json(tmp_path, capsys):
    _run(tmp_path, "toys", "sasrec", "20260101-000000", 0.05, 0.04)
    _run(tmp_path, "toys", "sasrec", "20260102-000000", 0.06, 0.03)      # better valid, worse test: chosen
    _run(tmp_path, "toys", "ranker", "20260102-000000", 0.07, 0.08, **{"test/retrieval_ndcg@10": 0.06})
    (tmp_path / "toys" / "pop" / "unfinished").mkdir(parents=True)         # no metrics.json: skipped
    out = bench_quality.main([f"paths.runs={tmp_path}"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(out))
    assert last["results"]["toys/sasrec"]["test/ndcg@10"] == 0.03
    assert last["results"]["toys/ranker"]["test/retrieval_ndcg@10"] == 0.06
    assert "toys/pop" not in last["results"]
    latest = bench_quality.main([f"paths.runs={tmp_path}", "--select", "latest"])
    assert latest["results"]["toys/sasrec"]["run"].endswith("20260102-000000")


def test_bench_train_fast_preset_runs_every_variant(tiny_artifacts, tmp_path, capsys):
    """Every speed variant trains on the tiny data (torch.compile left out here: ~50 s of compilation on this CPU)."""
    import bench_train

    names = [n for n in bench_train.FAST if "compile" not in n]
    out = bench_train.main(["--preset", "fast", "--only", ",".join(names), "--trainer", "cpu", "--data", "online_retail",
                            f"paths.artifacts={tiny_artifacts}", f"paths.runs={tmp_path}", "data.name=tiny",
                            "model.hidden=16", "model.blocks=1", "model.heads=1", "model.use_attributes=false",
                            "trainer.max_epochs=2", "trainer.eval.valid_max_users=100"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(out, default=str))
    assert list(last["variants"]) == ["plain", *names] and last["target_valid_ndcg@10"] > 0
    for name, r in last["variants"].items():
        assert r["epochs"] >= 1 and r["valid_ndcg@10"] is not None, name
        assert r["valid_epoch_users"] == 100                    # cheap validation: a 100-user subset of 300
    assert last["variants"]["plain"]["reaches_target"] is True
    # a given target skips the plain baseline; variants stop once the per-epoch valid NDCG@10 reaches it
    out = bench_train.main(["--preset", "fast", "--only", "defaults", "--target", "0.0", "--trainer", "cpu",
                            "--data", "online_retail", f"paths.artifacts={tiny_artifacts}", f"paths.runs={tmp_path}",
                            "data.name=tiny", "model.hidden=16", "model.blocks=1", "model.heads=1",
                            "model.use_attributes=false", "trainer.max_epochs=3"])
    r = out["variants"]["defaults"]
    assert list(out["variants"]) == ["defaults"] and r["epochs"] == 1 and r["stop_reason"] == "target_reached"
