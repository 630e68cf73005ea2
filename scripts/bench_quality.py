"""Quality table of every finished run: model × dataset × metric, from the runs' ``metrics.json``.

    python scripts/bench_quality.py [paths.runs=artifacts/runs] [--select best_valid|latest]

Reads ``${paths.runs}/<data>/<model>/<run>/metrics.json`` (a run without it is unfinished and skipped).
Per (dataset, model) it reports the run with the best ``valid/ndcg@10`` (``--select best_valid``, the
default: selection on validation only) or the newest one (``--select latest``); the test numbers are
never used to choose. Ranker runs (engineer C) also show ``test/retrieval_ndcg@10``. The protocol of each
run (full ranking, history excluded or not) is printed with it. The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COLUMNS = ["test/ndcg@10", "test/hr@10", "test/ndcg@20", "test/hr@20", "test/hr@50", "test/hr@100", "test/mrr",
           "test/coverage@10", "test/pop@10", "valid/ndcg@10", "test/retrieval_ndcg@10"]


def collect(runs: Path) -> list[dict]:
    rows = []
    for f in sorted(runs.glob("*/*/*/metrics.json")):
        if any(part.startswith(".") for part in f.relative_to(runs).parts):
            continue
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "test/ndcg@10" not in m:
            continue
        data, model, run = f.parent.parent.parent.name, f.parent.parent.name, f.parent.name
        rows.append({"data": m.get("data", data), "model": m.get("model", model), "run": run, "path": str(f.parent),
                     "exclude_history": (m.get("protocol") or {}).get("exclude_history"),
                     **{c: m.get(c) for c in COLUMNS}})
    return rows


def select(rows: list[dict], how: str) -> list[dict]:
    best: dict[tuple, dict] = {}
    counts: dict[tuple, int] = {}
    for r in rows:
        key = (r["data"], r["model"])
        counts[key] = counts.get(key, 0) + 1
        cur = best.get(key)
        if how == "latest":
            better = cur is None or r["run"] > cur["run"]
        else:
            better = cur is None or (r["valid/ndcg@10"] or -1) > (cur["valid/ndcg@10"] or -1)
        if better:
            best[key] = r
    out = []
    for key in sorted(best):
        out.append({**best[key], "n_runs": counts[key]})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--select", choices=["best_valid", "latest"], default="best_valid")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.runs=/some/runs")
    args = ap.parse_intermixed_args(argv)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=args.overrides)
    runs = Path(str(cfg.paths.runs))
    table = select(collect(runs), args.select)
    shown = ["test/ndcg@10", "test/hr@10", "test/ndcg@20", "test/hr@20", "test/mrr", "test/coverage@10",
             "test/pop@10", "valid/ndcg@10", "test/retrieval_ndcg@10"]
    print(f"runs: {runs} (one run per dataset/model, chosen by {args.select}; full ranking)")
    print(f"{'data':<16}{'model':<12}" + "".join(f"{c.replace('test/', ''):>15}" for c in shown) + f"{'hist.excl.':>11}{'runs':>6}")
    for r in table:
        cells = "".join(f"{r[c]:>15.4f}" if isinstance(r[c], (int, float)) else f"{'-':>15}" for c in shown)
        print(f"{r['data']:<16}{r['model']:<12}{cells}{str(r['exclude_history']):>11}{r['n_runs']:>6}")
    out = {"bench": "quality", "runs": str(runs), "select": args.select,
           "results": {f"{r['data']}/{r['model']}": {c: r[c] for c in COLUMNS if r[c] is not None} | {"run": r["path"]}
                       for r in table}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
