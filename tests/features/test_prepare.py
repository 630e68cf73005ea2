"""The entry point: bad input exits non-zero with one line, nothing half-written, determinism, skip."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from features.prepare import run
from tests.features.conftest import REPO, make_cfg


def cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOPREC_PSEUDO_KEY": "test-key", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "features.prepare", f"paths.artifacts={tmp}", *args],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def small_csv(tmp_path: Path) -> Path:
    p = tmp_path / "e.csv"
    p.write_text("u,i,t,e\n" + "".join(f"{u},{i},2024-01-0{d}T10:00:00,view\n" for u in range(3) for i, d in ((1, 1), (2, 2), (3, 3))))
    return p


@pytest.mark.parametrize("args,needle", [
    (["data=no_such_dataset"], "data='no_such_dataset'"),
    (["data=events_csv"], "data.path"),
    (["data=events_csv", "data.path=/no/such/file.csv", "data.columns.user=u", "data.columns.item=i"], "/no/such/file.csv"),
])
def test_bad_input_one_line_nonzero(tmp_path, args, needle):
    r = cli(*args, tmp=tmp_path)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_missing_column_cli_nothing_half_written(tmp_path):
    csv = small_csv(tmp_path)
    r = cli("data=events_csv", f"data.path={csv}", "data.columns.user=u", "data.columns.item=nope",
            "data.columns.ts=t", "data.columns.event=e", tmp=tmp_path)
    assert r.returncode != 0 and "'nope'" in r.stderr.strip().splitlines()[-1]
    processed = tmp_path / "processed"
    assert not processed.exists() or not any(processed.iterdir())


def test_unreadable_file(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"not a parquet file")
    r = cli("data=events_csv", f"data.path={p}", "data.format=parquet", "data.columns.user=u", "data.columns.item=i", "data.columns.ts=t",
            tmp=tmp_path)
    assert r.returncode != 0 and "cannot read" in r.stderr and "bad.parquet" in r.stderr


def test_deterministic_and_skipped(tmp_path):
    csv = small_csv(tmp_path)
    args = ["data=events_csv", f"data.path={csv}", "data.columns.user=u", "data.columns.item=i",
            "data.columns.ts=t", "data.columns.event=e", "data.name=d"]
    a = run(make_cfg(*args, f"paths.artifacts={tmp_path / 'a'}"))
    b = run(make_cfg(*args, f"paths.artifacts={tmp_path / 'b'}"))
    for rel in a.manifest["outputs"]:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes(), rel
    assert (a.out_dir / "manifest.json").read_bytes() == (b.out_dir / "manifest.json").read_bytes()
    again = run(make_cfg(*args, f"paths.artifacts={tmp_path / 'a'}"))
    assert again.skipped
    forced = run(make_cfg(*args, f"paths.artifacts={tmp_path / 'a'}", "force=true"))
    assert not forced.skipped
    monkey_key = os.environ.get("SHOPREC_PSEUDO_KEY")
    os.environ["SHOPREC_PSEUDO_KEY"] = "another-key"   # another pseudonymisation key: re-run
    try:
        assert not run(make_cfg(*args, f"paths.artifacts={tmp_path / 'a'}")).skipped
    finally:
        os.environ["SHOPREC_PSEUDO_KEY"] = monkey_key or "test-key"
    csv.write_text(csv.read_text() + "9,9,2024-01-09T00:00:00,view\n")   # changed input: re-run
    changed = run(make_cfg(*args, f"paths.artifacts={tmp_path / 'a'}"))
    assert not changed.skipped and changed.manifest["n_events"] == 10


def test_failed_rerun_keeps_previous_output(tmp_path):
    csv = small_csv(tmp_path)
    args = ["data=events_csv", f"data.path={csv}", "data.columns.user=u", "data.columns.item=i",
            "data.columns.ts=t", "data.columns.event=e", "data.name=d", f"paths.artifacts={tmp_path}"]
    first = run(make_cfg(*args))
    before = (first.out_dir / "events.parquet").read_bytes()
    with pytest.raises(ValueError):
        run(make_cfg(*args, "data.columns.event=zzz", "force=true"))
    assert (first.out_dir / "events.parquet").read_bytes() == before
    assert [p.name for p in first.out_dir.parent.iterdir()] == ["d"]   # no temporary folder left


def test_summary_reads_the_manifest(tmp_path):
    from features.summary import run as summary_run

    csv = small_csv(tmp_path)
    args = ["data=events_csv", f"data.path={csv}", "data.columns.user=u", "data.columns.item=i",
            "data.columns.ts=t", "data.columns.event=e", "data.name=d", f"paths.artifacts={tmp_path}"]
    run(make_cfg(*args))
    text = summary_run(make_cfg(*args))
    assert "input rows                 9" in text and "reconciliation  OK" in text and "split loo" in text
