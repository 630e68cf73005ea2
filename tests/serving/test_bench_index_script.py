"""scripts/bench_index.py end to end at toy size: a norm-ranged setting, the validation sweep over a stratum's
parameters, the table and the JSON last line with recall and speed-up per size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_index_prints_a_table_and_a_json_last_line():
    cmd = [sys.executable, str(REPO / "scripts" / "bench_index.py"), "--sizes", "20000", "--repeats", "1",
           "--queries-b1", "10", "--queries-b256", "256", "--recall-queries", "50", "--filter-queries", "5",
           "--set-100k", "factory='IVF64,Flat'", "search_params.nprobe=8", "filtered_search_params.nprobe=16",
           "norm_strata=[{share:0.05,factory:'IVF8,Flat',search_params:{nprobe:4}}]",
           "--sweep-100k", "s0.nprobe=2,8;nprobe=4,8"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("items | index | norm_strata") for line in lines)
    assert sum("validation {" in line for line in lines) == 4             # 2 x 2 grid, validation queries only
    res = json.loads(lines[-1])["sizes"]["20000"]
    assert res["norm_strata"][0]["factory"] == "IVF8,Flat" and res["search_params"] == {"nprobe": 8}
    assert 0.9 <= res["recall_at_100"] <= 1.0 and res["speedup_vs_exact"] > 0
    assert res["filters"]["selector"]["recall_at_100"] >= 0.9
