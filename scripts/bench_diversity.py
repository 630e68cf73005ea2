"""The serve-time diversity rule's trade-off: NDCG against diversity, novelty, coverage and exposure, per lambda.

    nice -n 10 python scripts/bench_diversity.py run=<a sequence or two-tower run folder>
        [--lambdas 0,0.1,0.2,0.3,0.5,0.7,0.9] [--candidates 100] [--max-users 5000] [--out artifacts/bench/diversity]

For each user of the validation and the test split (the first ``--max-users`` rows of each) the run's model
scores every item, the history is masked (discovery), the top ``--candidates`` are re-ranked by
``serving.rules.diversify`` (maximal marginal relevance by category, the rule ``serve.rules.diversity`` turns
on) and the top 10 are evaluated by ``training.metrics.evaluate_candidate_lists``: NDCG@10, HR@10 and the
beyond-accuracy figures (``ild@10``, ``novelty@10``, ``coverage@10``, ``tail_share@10``, ``gini@10``). A lambda
is chosen on validation only (the largest one that keeps at least 95 % of the validation NDCG@10 at lambda 0);
test figures are reported, never used to choose. Prints a table, writes ``tradeoff.png`` and ``tradeoff.json``
under ``--out``; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHOWN = ("ndcg@10", "hr@10", "ild@10", "novelty@10", "coverage@10", "tail_share@10", "gini@10")
KEEP_NDCG = 0.95


def _rerank_metrics(top_ids, top_scores, targets, lam, n_items, pop, cats) -> dict:
    from serving.rules import diversify
    from training.metrics import evaluate_candidate_lists

    k = 10
    ids, rel = [], []
    for row_ids, row_scores, t in zip(top_ids, top_scores, targets):
        pick = row_ids[diversify(cats[row_ids], row_scores, k, lam)]
        ids.append(pick)
        rel.append(pick == t)
    ids, rel = np.concatenate(ids), np.concatenate(rel)
    offsets = np.arange(0, len(ids) + 1, k)
    order_scores = np.tile(np.arange(k, 0, -1, dtype=np.float64), len(targets))   # the re-ranked order
    return evaluate_candidate_lists(order_scores, offsets, rel, np.ones(len(targets), np.int64), ks=(10,),
                                    model="diversified", items=ids, n_items=n_items, popularity=pop,
                                    item_category=cats)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lambdas", default="0,0.1,0.2,0.3,0.5,0.7,0.9")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--max-users", type=int, default=5000)
    ap.add_argument("--out", default="artifacts/bench/diversity")
    ap.add_argument("overrides", nargs="*", help="run=<run folder> (required) and Hydra overrides")
    args = ap.parse_intermixed_args(argv)
    import torch

    from features.processed import processed_dir
    from training.runs import load_data, load_module, open_run

    run = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("run=")), None)
    if not run:
        raise SystemExit("bench_diversity: run=<run folder> is required (a sequence or two-tower training run)")
    lambdas = [float(x) for x in args.lambdas.split(",")]
    info = open_run(run)
    data, _ = load_data(info.cfg, processed_dir(info.cfg))
    module = load_module(info, "cpu")
    pop = data.popularity[1:].numpy()
    cats = data.item_category.numpy()
    t0 = time.perf_counter()
    with torch.no_grad():
        items = module.item_embeddings().float()
    results: dict[str, dict[str, dict]] = {}
    for name, split in (("valid", data.valid), ("test", data.test)):
        n = min(len(split), args.max_users)
        top_ids, top_scores = [], []
        with torch.no_grad():
            for a in range(0, n, 1024):
                b = min(a + 1024, n)
                s = module.score_batch(split.inputs[a:b], items, split.user_feat_rows(a, b))
                h_rows, h_items = split.history_mask_coords(a, b)
                s[h_rows, h_items - 1] = float("-inf")
                v, i = s.topk(args.candidates, dim=1)
                top_ids.append(i.numpy())
                top_scores.append(v.double().numpy())
        top_ids, top_scores = np.concatenate(top_ids), np.concatenate(top_scores)
        targets = split.targets[:n].numpy() - 1
        results[name] = {str(lam): _rerank_metrics(top_ids, top_scores, targets, lam, data.n_items, pop, cats)
                         for lam in lambdas}
    base = results["valid"][str(lambdas[0])]["ndcg@10"]
    chosen = max((lam for lam in lambdas if results["valid"][str(lam)]["ndcg@10"] >= KEEP_NDCG * base), default=0.0)
    print(f"run {info.run_dir} ({info.cfg.model.name} on {info.cfg.data.name}); top {args.candidates} candidates "
          f"re-ranked; {min(len(data.valid), args.max_users)} valid / {min(len(data.test), args.max_users)} test users")
    for name in ("valid", "test"):
        print(f"{name}:")
        print(f"  {'lambda':>7}" + "".join(f"{c:>15}" for c in SHOWN))
        for lam in lambdas:
            m = results[name][str(lam)]
            print(f"  {lam:>7.2f}" + "".join(f"{m[c]:>15.4f}" if c in m else f"{'-':>15}" for c in SHOWN))
    print(f"chosen on validation (largest lambda keeping >= {KEEP_NDCG:.0%} of its NDCG@10): {chosen}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(results, lambdas, out_dir / "tradeoff.png")
    out = {"bench": "diversity", "run": str(info.run_dir), "model": str(info.cfg.model.name),
           "data": str(info.cfg.data.name), "candidates": args.candidates, "max_users": args.max_users,
           "lambdas": lambdas, "chosen_on_valid": chosen, "seconds": time.perf_counter() - t0,
           "png": str(out_dir / "tradeoff.png"), "results": results}
    tmp = out_dir / "tradeoff.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(out_dir / "tradeoff.json")
    print(json.dumps(out))
    return out


def _plot(results: dict, lambdas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("ild@10", "tail_share@10", "novelty@10")):
        for name, style in (("valid", "o-"), ("test", "s--")):
            xs = [results[name][str(lam)][metric] for lam in lambdas]
            ys = [results[name][str(lam)]["ndcg@10"] for lam in lambdas]
            ax.plot(xs, ys, style, label=name)
            for lam, x, y in zip(lambdas, xs, ys):
                ax.annotate(f"{lam:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(metric)
        ax.set_ylabel("NDCG@10")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("serve.rules.diversity: NDCG@10 against diversity, long-tail share and novelty (labels: lambda)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
