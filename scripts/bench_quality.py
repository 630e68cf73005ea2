"""Quality table of every finished run: model × dataset × metric, one block per protocol.

    python scripts/bench_quality.py [paths.runs=artifacts/runs] [--select best_valid|latest]
                                    [--protocol split=shop,history=discovery[,users=all]]

Reads ``${paths.runs}/<data>/<model>/<run>/metrics.json`` (a run without it is unfinished and skipped).
Runs are keyed by protocol (split, history mask, ``max_users``, tie rule: ``training.quality_table``)
and never compared or picked across protocols. Per (protocol, dataset, model) it reports the run with
the best ``valid/ndcg@10`` (default; selection on validation only) or the newest. Each row has the
beyond-accuracy figures of its test top-10 lists beside accuracy (intra-list diversity by category,
novelty, catalogue coverage, long-tail share, Gini of exposure: ``training.metrics``). The last stdout
line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.quality_table import collect, parse_key, render, results, select

CONF = Path(__file__).resolve().parent.parent / "conf"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--select", choices=["best_valid", "latest"], default="best_valid")
    ap.add_argument("--protocol", default=None, help="only this protocol, e.g. split=shop,history=discovery")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.runs=/some/runs")
    args = ap.parse_intermixed_args(argv)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=args.overrides)
    runs = Path(str(cfg.paths.runs))
    only = parse_key(args.protocol) if args.protocol else None
    table = select(collect(runs), args.select, only)
    print(f"runs: {runs} (one run per protocol/dataset/model, chosen by {args.select}; full ranking)")
    for line in render(table):
        print(line)
    out = {"bench": "quality", "runs": str(runs), "select": args.select,
           "protocol_filter": None if only is None else str(only), "results": results(table)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
