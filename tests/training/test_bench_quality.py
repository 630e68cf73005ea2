"""The quality table: runs keyed by protocol, picked by validation inside one protocol, never mixed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.quality_table import MixedProtocolsError, ProtocolKey, collect, compare, parse_key, render, results, select

REPO = Path(__file__).resolve().parents[2]
NEW_TIES = "expected position (rank = 1 + #strictly higher + #other items with an equal score / 2)"


def _run(root, data, model, run, valid, test, split="loo", exclude=True, max_users=None, ties=NEW_TIES, **extra):
    d = root / data / model / run
    d.mkdir(parents=True)
    protocol = {"split": split, "exclude_history": exclude, "max_users": max_users}
    for key in ("candidates", "holdout_shift"):
        if key in extra:
            protocol[key] = extra.pop(key)
    if ties is not None:
        protocol["ties"] = ties
    (d / "metrics.json").write_text(json.dumps({"valid/ndcg@10": valid, "test/ndcg@10": test, "test/hr@10": 2 * test,
                                                "data": data, "model": model, "protocol": protocol, **extra}))


def test_selects_by_valid_within_a_protocol(tmp_path):
    _run(tmp_path, "toys", "sasrec", "20260101-000000", 0.05, 0.04)
    _run(tmp_path, "toys", "sasrec", "20260102-000000", 0.06, 0.03)      # better valid, worse test: chosen
    _run(tmp_path, "toys", "ranker", "20260102-000000", 0.07, 0.08, **{"test/retrieval_ndcg@10": 0.06})
    (tmp_path / "toys" / "pop" / "unfinished").mkdir(parents=True)         # no metrics.json: skipped
    table = select(collect(tmp_path))
    res = results(table)["split=loo history=discovery users=all ties=expected"]
    assert res["toys/sasrec"]["test/ndcg@10"] == 0.03 and res["toys/sasrec"]["n_runs"] == 2
    assert res["toys/ranker"]["test/retrieval_ndcg@10"] == 0.06
    assert "toys/pop" not in res
    latest = results(select(collect(tmp_path), "latest"))["split=loo history=discovery users=all ties=expected"]
    assert latest["toys/sasrec"]["run"].endswith("20260102-000000")


def test_ranker_rows_carry_beyond_accuracy_of_both_orders(tmp_path):
    beyond = {"test/ild@10": 0.61, "test/novelty@10": 9.5, "test/coverage@10": 0.21, "test/tail_share@10": 0.12,
              "test/gini@10": 0.93, "test/retrieval_ild@10": 0.55, "test/retrieval_novelty@10": 9.9,
              "test/retrieval_tail_share@10": 0.15, "test/retrieval_category_known@10": 1.0}
    _run(tmp_path, "retail", "ranker", "r1", 0.3, 0.31, split="temporal", exclude=False, candidates=200,
         **{"test/retrieval_ndcg@10": 0.18}, **beyond)
    table = select(collect(tmp_path))
    lines = render(table)
    assert lines[0] == "protocol: split=temporal (re-rank of 200 candidates) history=repeat-aware users=all ties=expected"
    assert "ild@10" in lines[1] and "0.6100" in lines[2] and "0.9300" in lines[2]       # the re-ranked lists' figures
    got = next(iter(results(table).values()))["retail/ranker"]
    assert {k: got[k] for k in beyond} == beyond                                      # and the retrieval order's
    assert "test/retrieval_gini@10" not in got                                        # absent figures stay absent


def test_protocols_are_never_mixed(tmp_path):
    # the best valid of each kind would win a mixed pick: a repeat-aware run, a smoke run, a legacy run
    _run(tmp_path, "retail", "two_tower", "r1", 0.04, 0.03, split="shop")
    _run(tmp_path, "retail", "two_tower", "r2", 0.30, 0.25, split="shop", exclude=False)
    _run(tmp_path, "retail", "two_tower", "r3", 0.50, 0.45, split="shop", max_users=300)
    _run(tmp_path, "retail", "two_tower", "r4", 0.60, 0.55, split="shop", ties=None)      # old evaluator
    _run(tmp_path, "retail", "two_tower", "r5", 0.70, 0.65, split="temporal")
    table = select(collect(tmp_path))
    assert len(table) == 5 and all(r["n_runs"] == 1 for r in table)
    discovery = ProtocolKey("shop", "discovery", "all", "expected")
    only = select(collect(tmp_path), only=discovery)
    assert [r["run"] for r in only] == ["r1"]
    with pytest.raises(MixedProtocolsError, match="different protocols"):
        compare(table)
    lines = render(table)
    assert sum(line.startswith("protocol:") for line in lines) == 5
    assert "protocol: split=shop history=discovery users=max_users=300 ties=expected" in lines
    assert "protocol: split=shop history=discovery users=all ties=legacy" in lines


def test_a_reranking_of_candidates_is_not_compared_with_full_rankings(tmp_path):
    # the ranker's NDCG is over the retriever's top candidates: a far easier ranking than the full catalogue
    _run(tmp_path, "retail", "two_tower", "r1", 0.02, 0.02, split="temporal")
    _run(tmp_path, "retail", "ranker", "r2", 0.30, 0.31, split="temporal", candidates=200)
    table = select(collect(tmp_path))
    keys = {r["model"]: r["protocol"] for r in table}
    assert keys["ranker"] != keys["two_tower"]
    assert keys["ranker"].split == "temporal (re-rank of 200 candidates)"
    with pytest.raises(MixedProtocolsError):
        compare(table)


def test_a_shifted_run_is_its_own_protocol(tmp_path):
    # trainer.eval.holdout_shift=1 chooses the refit length: its "test" targets are the real validation targets
    _run(tmp_path, "toys", "sasrec", "r1", 0.08, 0.07)
    _run(tmp_path, "toys", "sasrec", "r2", 0.09, 0.075, holdout_shift=1)
    table = select(collect(tmp_path))
    assert sorted(r["protocol"].split for r in table) == ["loo", "loo (shifted 1)"]
    assert [r["run"] for r in select(collect(tmp_path), only=parse_key("split=loo,history=discovery"))] == ["r1"]


def test_parse_protocol_filter():
    assert parse_key("split=shop,history=repeat-aware") == ProtocolKey("shop", "repeat-aware", "all", "expected")
    with pytest.raises(ValueError, match="history"):
        parse_key("split=shop,history=maybe")
    with pytest.raises(ValueError, match="expected split"):
        parse_key("history=discovery")


def test_script_prints_blocks_and_ends_with_json(tmp_path):
    _run(tmp_path, "toys", "pop", "r1", 0.01, 0.02)
    _run(tmp_path, "toys", "pop", "r2", 0.01, 0.02, exclude=False)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_quality.py"), f"paths.runs={tmp_path}",
                          "--protocol", "split=loo,history=repeat-aware"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.strip().splitlines()
    last = json.loads(out[-1])
    assert list(last["results"]) == ["split=loo history=repeat-aware users=all ties=expected"]
    assert any(line.startswith("protocol: split=loo history=repeat-aware") for line in out)
