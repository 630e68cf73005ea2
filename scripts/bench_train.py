"""Training speed of SASRec: sequences/s, epoch time and time to best validation, per variant.

    python scripts/bench_train.py [--data amazon_toys] [--trainer gpu] \
        [--variant "plain=model.optimizer=adam model.heads=1 ..."] [--variant "tuned="] [-- extra overrides]
    python scripts/bench_train.py --preset fast [--only b1024,b1024_noclip] [--target 0.0615]  # the quality to reach (plain SASRec's best valid NDCG@10)

Every variant trains in this one process with ``training.train.run`` (early stopping as configured) and
its figures are read from the run's ``metrics.json`` history. ``time to target`` is the training wall time
until the validation NDCG@10 first reaches the *first* variant's best (the baseline, by default the plain
SASRec; or ``--target``), so ``speedup`` = baseline time to best / variant time to target. Epoch times are
medians and include the per-epoch validation.

``--preset fast`` runs the plain baseline, our defaults and the speed variants of ``FAST`` (larger batch
with a larger learning rate, no gradient clipping = fused AdamW on CUDA, cheap validation on a
seeded subset of valid users, ``torch.compile``, and fp32 for comparison with bf16); every variant after the
baseline stops as soon as its per-epoch valid NDCG@10 reaches the target (``trainer.stop_at_valid_ndcg``,
``--no-stop-at-target`` to train on). With cheap validation the per-epoch NDCG is the subset's, so the table
also gives the full-split valid NDCG@10 of the selected checkpoint and whether it reaches the target.
The last stdout line is one JSON object with all figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The plain SASRec baseline: 64-d, 2 blocks, 1 head, max_len 50, dropout 0.2, Adam 1e-3, batch 256, full CE.
PLAIN = ("model.hidden=64 model.blocks=2 model.heads=1 model.max_len=50 model.dropout=0.2 model.emb_dropout=0.2 "
         "model.optimizer=adam model.lr=0.001 model.weight_decay=0.0 model.batch_size=256 model.loss=full_ce "
         "model.use_attributes=false model.label_smoothing=0.0 model.scheduler=constant model.warmup_steps=0 "
         "model.tie_weights=true model.ffn_mult=1 model.ema_decay=0.0")


# Speed variants on top of our defaults (conf/model/sasrec.yaml; bf16-mixed on trainer=gpu), ordered by promise so
# that a capped GPU run loses the least useful last. Epochs to the target are device-independent up to bf16, so the
# CPU ranked them (fp32, 2026-11-27, before the weight average became a default; `--trainer cpu --target 0.0739
# --variant ...`). First epoch at plain's valid
# NDCG@10 (0.0739, from the H200), and optimiser steps until then:
#   defaults, batch 256:   epoch 10, 760 steps       batch 2048, lr 6e-3: epoch 7, 70 steps
#   batch 4096, lr 8e-3:   epoch 8, 40 steps         batch 2048, lr 4e-3: epoch 8, 80 steps
#   batch 1024, lr 2e-3:   epoch 11, 209 steps       (batch 2048 at 2.8e-3: 11; batch 4096 at 4e-3: 13)
# On a GPU a step costs little more at 2048 than at 256, so fewer steps is what buys time.
CHEAP_VALID = "trainer.eval.valid_max_users=4096"
NOCLIP = "trainer.gradient_clip_val=null"
B2048 = f"model.batch_size=2048 model.lr=0.006 {NOCLIP}"
FAST = {
    "defaults": "",
    "ungrouped": "model.group_by_length=0",     # random batches padded to max_len (the default before 2026-12-06)
    "b2048_noclip": B2048,
    "b4096_noclip": f"model.batch_size=4096 model.lr=0.008 {NOCLIP}",
    "b2048_lr4_noclip": f"model.batch_size=2048 model.lr=0.004 {NOCLIP}",
    "b1024_noclip": f"model.batch_size=1024 model.lr=0.002 {NOCLIP}",
    "b2048_noclip_cheapval": f"{B2048} {CHEAP_VALID}",
    "b2048_noclip_compile": f"{B2048} trainer.compile=true",
    "defaults_fp32": "trainer.precision=32-true",
}


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
        "reaches_target": (m.get("valid/ndcg@10") or 0) >= target if target is not None else None,
        "valid_epoch_users": m.get("valid_epoch_users"), "stop_reason": m.get("stop_reason"),
        "run_dir": m.get("run_dir"),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="amazon_toys")
    ap.add_argument("--trainer", default="gpu")
    ap.add_argument("--variant", action="append", default=None,
                    help='"name=override override ..." (repeatable; the first is the baseline)')
    ap.add_argument("--preset", choices=["default", "fast"], default="default",
                    help="default: plain + tuned; fast: plain + the speed variants (FAST)")
    ap.add_argument("--only", default=None, help="comma-separated FAST variant names to run (after the baseline)")
    ap.add_argument("--target", type=float, default=None,
                    help="valid NDCG@10 to reach; given, the plain baseline is not trained (speedups then need it)")
    ap.add_argument("--no-stop-at-target", dest="stop_at_target", action="store_false",
                    help="train every variant to early stopping instead of stopping at the target")
    ap.add_argument("--list", action="store_true", help="print the fast preset's variant names (JSON) and exit")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every variant")
    args = ap.parse_intermixed_args(argv)
    if args.list:
        out = {"variants": list(FAST)}
        print(json.dumps(out))
        return out
    if args.variant:
        variants = args.variant
    elif args.preset == "fast":
        names = list(FAST) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in FAST]
        if unknown:
            ap.error(f"--only: unknown variant(s) {unknown}; known: {list(FAST)}")
        variants = [f"plain={PLAIN}"] + [f"{n}={FAST[n]}" for n in names]
    else:
        variants = [f"plain={PLAIN}", "tuned="]
    if args.target is not None:
        variants = [v for v in variants if not v.startswith("plain=")] or variants

    from hydra import compose, initialize_config_dir

    from training.train import run

    results: dict[str, dict] = {}
    target = args.target
    for spec in variants:
        name, _, ov = spec.partition("=")
        stop = [f"trainer.stop_at_valid_ndcg={target}"] if target is not None and args.stop_at_target else []
        # the refit after early stopping is no part of the time to a validation figure: left out of every variant
        overrides = ["model=sasrec", "model.refit_epochs=0", f"data={args.data}", f"trainer={args.trainer}", *ov.split(),
                     *args.overrides, *stop]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        print(f"[bench_train] {name}: {' '.join(overrides)}", flush=True)
        res = run(cfg)
        fig = _figures(res.metrics, target)
        if target is None:                       # the first variant sets the quality target
            target = res.metrics.get("valid/ndcg@10")
            fig["time_to_target_s"] = fig["time_to_best_s"]
            fig["reaches_target"] = True
        results[name] = {**fig, "overrides": ov}
    base = results[next(iter(results))] if args.target is None else {"time_to_best_s": None}
    for r in results.values():
        r["speedup_vs_baseline"] = (base["time_to_best_s"] / r["time_to_target_s"]
                                    if r["time_to_target_s"] and base["time_to_best_s"] else None)

    cols = ["epochs", "median_epoch_s", "sequences_per_s", "time_to_best_s", "time_to_target_s",
            "speedup_vs_baseline", "valid_ndcg@10", "reaches_target", "test_ndcg@10"]
    width = max(12, *(len(n) + 1 for n in results))
    print(f"\n{'variant':<{width}}" + "".join(f"{c:>18}" for c in cols))
    for name, r in results.items():
        cells = "".join(f"{r[c]:>18.4f}" if isinstance(r[c], float) else f"{str(r[c]):>18}" for c in cols)
        print(f"{name:<{width}}{cells}")
    source = "--target" if args.target is not None else f"the best of '{next(iter(results))}'"
    print(f"(target = valid NDCG@10 {target} ({source}); times include per-epoch validation; valid_ndcg@10 = full "
          f"valid split at the selected checkpoint; time_to_target of cheap-validation variants is on their subset)")
    out = {"bench": "train", "data": args.data, "trainer": args.trainer, "preset": args.preset,
           "target_valid_ndcg@10": target, "variants": results}
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
