"""Training speed of SASRec: sequences/s, epoch time and time to best validation, per variant.

    python scripts/bench_train.py [--data amazon_toys] [--trainer gpu] \
        [--variant "plain=model.optimizer=adam model.heads=1 ..."] [--variant "tuned="] [-- extra overrides]

Every variant trains in this one process with ``training.train.run`` (early stopping as configured) and
its figures are read from the run's ``metrics.json`` history. ``time to target`` is the training wall time
until the validation NDCG@10 first reaches the *first* variant's best (the baseline, by default the plain
SASRec), so ``speedup`` = baseline time to best / variant time to target. Epoch times are medians and
include the per-epoch validation. The last stdout line is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The plain SASRec of the issue: 64-d, 2 blocks, 1 head, max_len 50, dropout 0.2, Adam 1e-3, batch 256, full CE.
PLAIN = ("model.hidden=64 model.blocks=2 model.heads=1 model.max_len=50 model.dropout=0.2 model.emb_dropout=0.2 "
         "model.optimizer=adam model.lr=0.001 model.weight_decay=0.0 model.batch_size=256 model.loss=full_ce "
         "model.use_attributes=false model.label_smoothing=0.0 model.scheduler=constant model.warmup_steps=0 "
         "model.tie_weights=true model.ffn_mult=1")


def _figures(m: dict, target: float | None) -> dict:
    hist = m.get("history", [])
    times = [h["time_s"] for h in hist]
    epoch_times = [b - a for a, b in zip([0.0] + times[:-1], times)]
    to_target = None
    if target is not None:
        for h in hist:
            if (h["valid/ndcg@10"] or 0) >= target:
                to_target = h["time_s"]
                break
    return {
        "epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"), "time_to_best_s": m.get("time_to_best_s"),
        "time_to_target_s": to_target, "median_epoch_s": statistics.median(epoch_times) if epoch_times else None,
        "sequences_per_s": m.get("sequences_per_s"), "valid_ndcg@10": m.get("valid/ndcg@10"),
        "test_ndcg@10": m.get("test/ndcg@10"), "test_hr@10": m.get("test/hr@10"), "device": m.get("device"),
        "run_dir": m.get("run_dir"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="amazon_toys")
    ap.add_argument("--trainer", default="gpu")
    ap.add_argument("--variant", action="append", default=None,
                    help='"name=override override ..." (repeatable; the first is the baseline)')
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every variant")
    args = ap.parse_intermixed_args(argv)
    variants = args.variant or [f"plain={PLAIN}", "tuned="]

    from hydra import compose, initialize_config_dir

    from training.train import run

    results: dict[str, dict] = {}
    target = None
    for spec in variants:
        name, _, ov = spec.partition("=")
        overrides = ["model=sasrec", f"data={args.data}", f"trainer={args.trainer}", *ov.split(), *args.overrides]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        print(f"[bench_train] {name}: {' '.join(overrides)}", flush=True)
        res = run(cfg)
        fig = _figures(res.metrics, target)
        if target is None:                       # the first variant sets the quality target
            target = res.metrics.get("valid/ndcg@10")
            fig["time_to_target_s"] = fig["time_to_best_s"]
        results[name] = {**fig, "overrides": ov}
    base = results[next(iter(results))]
    for r in results.values():
        r["speedup_vs_baseline"] = (base["time_to_best_s"] / r["time_to_target_s"]
                                    if r["time_to_target_s"] and base["time_to_best_s"] else None)

    cols = ["epochs", "best_epoch", "median_epoch_s", "sequences_per_s", "time_to_best_s", "time_to_target_s",
            "speedup_vs_baseline", "valid_ndcg@10", "test_ndcg@10"]
    print(f"\n{'variant':<12}" + "".join(f"{c:>20}" for c in cols))
    for name, r in results.items():
        cells = "".join(f"{r[c]:>20.4f}" if isinstance(r[c], float) else f"{str(r[c]):>20}" for c in cols)
        print(f"{name:<12}{cells}")
    print(f"(target = valid NDCG@10 of '{next(iter(results))}' = {target}; times include per-epoch validation)")
    out = {"bench": "train", "data": args.data, "trainer": args.trainer, "target_valid_ndcg@10": target,
           "variants": results}
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
