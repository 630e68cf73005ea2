"""scripts/bench_quality.py picks runs by validation and prints a JSON last line."""
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
