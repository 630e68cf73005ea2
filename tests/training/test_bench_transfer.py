"""scripts/bench_transfer.py on the real MovieLens 100K: the S3-Rec file it writes, and a run through data=seq_txt.
The script runs as a command, as a user runs it (tests import no script)."""
import json
import subprocess
import sys

REPO_SCRIPTS = "scripts/bench_transfer.py"


def test_movielens_written_as_s3rec_5core_file_and_trained(data_root, repo_root, tmp_path):
    out = subprocess.run(
        [sys.executable, REPO_SCRIPTS, "--datasets", "movielens_100k", "--variants", "plain,defaults",
         "--variant", "no_attr=model.use_attributes=false",
         f"--data-root={data_root}", f"paths.artifacts={tmp_path}", f"paths.runs={tmp_path / 'runs'}",
         "trainer.max_epochs=1", "model.refit_epochs=1", "model.hidden=16", "model.blocks=1", "model.heads=1"],
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    ml = last["datasets"]["movielens_100k"]
    lines = (tmp_path / "transfer" / "movielens_100k.txt").read_text().splitlines()
    seqs = {int(l.split()[0]): [int(t) for t in l.split()[1:]] for l in lines}
    assert ml["file"]["users"] == len(seqs) == 943 and ml["file"]["actions"] == sum(map(len, seqs.values()))
    counts: dict[int, int] = {}
    for s in seqs.values():
        assert len(s) >= 5 and len(set(s)) == len(s)           # 5-core users; a movie is rated once
        for i in s:
            counts[i] = counts.get(i, 0) + 1
    assert min(counts.values()) >= 5 and sorted(counts) == list(range(1, ml["file"]["items"] + 1))
    attrs = json.loads((tmp_path / "transfer" / "movielens_100k_item2attributes.json").read_text())
    assert set(attrs) == {str(i) for i in counts} and all(1 <= a <= 19 for v in attrs.values() for a in v)
    assert ml["attributes"] is True and list(ml["variants"]) == ["plain", "defaults", "no_attr"]
    for v in ml["variants"].values():
        assert 0 < v["test_ndcg@10"] <= v["test_hr@10"] <= 1 and v["epochs"] == 1
    assert "defaults_vs_plain" in ml and ml["variants"]["no_attr"]["overrides"] == "model.use_attributes=false"
