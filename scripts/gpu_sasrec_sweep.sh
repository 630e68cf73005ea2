#!/usr/bin/env bash
# Ready for a GPU run. Tested locally in smoke mode (SWEEP_SMOKE=1, CPU, tiny caps).
#
# One-shot SASRec sweep on one GPU (H200), all configs at once as background processes (bf16-mixed, one
# CPU thread each), each capped at SWEEP_MAX_TIME seconds of training; then a summary sorted by VALID
# NDCG@10 (Toys and Sports separately) in $OUT/sweep.json. Two sets (SWEEP_SET):
#   defaults (default): 12 configs on Amazon Toys + 4 on Sports (how conf/model/sasrec.yaml was chosen), then
#            scripts/bench_train.py alone on the GPU: the plain SASRec against the best Toys config.
#   quality: each candidate on BOTH Toys and Sports against the shipped defaults (no weight average, EMA 0.999,
#            LiGR blocks, SwiGLU, cosine schedule, width, BSARec blocks), plus the defaults on the shifted protocol
#            (trainer.eval.holdout_shift=1) followed by the refit curve (python -m training.refit --epochs
#            0 1 2 3 4 6 8 10; one 10-epoch refit) and its control (--control: the same epochs on the training
#            sequences only), which choose model.refit_epochs on the real validation targets. $OUT/sweep.json
#            then also ranks candidates by their smaller relative gain over the defaults on the two
#            validation sets ("both_datasets"): a candidate is kept only if it wins on both.
#
#   OUT=/some/dir bash scripts/gpu_sasrec_sweep.sh                    # ~7 min on an H200
#   SWEEP_SET=quality OUT=/some/dir bash scripts/gpu_sasrec_sweep.sh  # ~5 min on an H200 (SWEEP_MAX_TIME=180)
#   SWEEP_SMOKE=1 OUT=/tmp/sw bash scripts/gpu_sasrec_sweep.sh        # CPU dry run, tiny caps (~2 min here)
#
# Needs artifacts/processed/amazon_{toys,sports} (python -m features.prepare data=amazon_toys ...).
# Env: PYTHON, SWEEP_PARALLEL (16), SWEEP_MAX_TIME (225 s), BENCH_MAX_TIME (75 s), SWEEP_ARTIFACTS.
set -e
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-artifacts/sweep}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
SMOKE=${SWEEP_SMOKE:-0}
ART=${SWEEP_ARTIFACTS:-artifacts}
TOYS=${SWEEP_TOYS:-amazon_toys}
SPORTS=${SWEEP_SPORTS:-amazon_sports}
SET=${SWEEP_SET:-defaults}
case "$SET" in defaults|quality) ;; *) echo "SWEEP_SET=$SET: must be defaults or quality" >&2; exit 2;; esac
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [ "$SMOKE" = "1" ]; then
  PARALLEL=${SWEEP_PARALLEL:-2}
  COMMON="trainer=cpu trainer.max_epochs=1 trainer.max_users=150 trainer.eval.sampled_negatives=0 trainer.num_threads=1"
  BENCH_ARGS="--trainer cpu trainer.max_epochs=2 trainer.max_users=150 trainer.num_threads=1"
else
  PARALLEL=${SWEEP_PARALLEL:-16}
  if [ "$SET" = quality ]; then MAXT=${SWEEP_MAX_TIME:-180}; else MAXT=${SWEEP_MAX_TIME:-225}; fi
  COMMON="trainer=gpu trainer.max_time=$MAXT trainer.patience=15 trainer.eval.sampled_negatives=0 trainer.num_threads=1"
  BENCH_ARGS="--trainer gpu trainer.max_time=${BENCH_MAX_TIME:-75} trainer.patience=10 trainer.num_threads=4"
fi

PLAIN="model.hidden=64 model.blocks=2 model.heads=1 model.dropout=0.2 model.emb_dropout=0.2 model.optimizer=adam model.lr=0.001 model.weight_decay=0.0 model.batch_size=256 model.use_attributes=false model.label_smoothing=0.0 model.scheduler=constant model.warmup_steps=0 model.tie_weights=true model.norm_first=true model.ffn_mult=1 model.ema_decay=0.0 model.refit_epochs=0"
B0="$PLAIN model.use_attributes=true model.dropout=0.5 model.emb_dropout=0.5"
B1="$B0 model.heads=2 model.optimizer=adamw model.weight_decay=0.05"

CONFIGS="$OUT/configs.txt"
if [ "$SET" = quality ]; then
{
  # q<t|s>_<candidate>: the same candidate on Toys (t) and Sports (s); the shipped defaults are "base"
  for pair in "t|$TOYS" "s|$SPORTS"; do
    p=${pair%%|*} d=${pair#*|}
    echo "q${p}_base|data=$d"
    echo "q${p}_noema|data=$d model.ema_decay=0.0"
    echo "q${p}_ema999|data=$d model.ema_decay=0.999"
    echo "q${p}_ligr|data=$d model.block=ligr"
    echo "q${p}_ligr_swiglu4|data=$d model.block=ligr model.ffn_activation=swiglu model.ffn_mult=4"
    echo "q${p}_ligr_noema|data=$d model.block=ligr model.ema_decay=0.0"
    echo "q${p}_cosine|data=$d model.scheduler=cosine model.lr=0.002 model.warmup_steps=200 trainer.max_epochs=40"
    echo "q${p}_h256|data=$d model.hidden=256"
    echo "q${p}_bsarec|data=$d model.block=bsarec"
    echo "q${p}_shift1|data=$d trainer.eval.holdout_shift=1 model.refit_epochs=0"
  done
} > "$CONFIGS"
if [ "$SMOKE" = "1" ]; then sed -i -n '1p;2p;4p;9p;10p;11p;12p;14p;20p' "$CONFIGS"; fi
else
{
  echo "t01_plain|data=$TOYS $PLAIN"
  echo "t02_plain_attr|data=$TOYS $PLAIN model.use_attributes=true"
  echo "t03_drop05|data=$TOYS $PLAIN model.dropout=0.5 model.emb_dropout=0.5"
  echo "t04_drop05_attr|data=$TOYS $B0"
  echo "t05_b1|data=$TOYS $B1"
  echo "t06_b1_h128|data=$TOYS $B1 model.hidden=128"
  echo "t07_b1_h256|data=$TOYS $B1 model.hidden=256"
  echo "t08_b1_ls01|data=$TOYS $B1 model.label_smoothing=0.1"
  echo "t09_b1_h128_drop03|data=$TOYS $B1 model.hidden=128 model.dropout=0.3 model.emb_dropout=0.3"
  echo "t10_b1_h128_3blk_4hd|data=$TOYS $B1 model.hidden=128 model.blocks=3 model.heads=4"
  echo "t11_b1_lr2e3_cos|data=$TOYS $B1 model.lr=0.002 model.scheduler=cosine model.warmup_steps=200 trainer.max_epochs=120"
  echo "t12_b1_h128_ls01_wd01|data=$TOYS $B1 model.hidden=128 model.label_smoothing=0.1 model.weight_decay=0.1"
  echo "s01_plain|data=$SPORTS $PLAIN"
  echo "s02_b1|data=$SPORTS $B1"
  echo "s03_b1_h128|data=$SPORTS $B1 model.hidden=128"
  echo "s04_b1_h128_ls01|data=$SPORTS $B1 model.hidden=128 model.label_smoothing=0.1"
} > "$CONFIGS"
if [ "$SMOKE" = "1" ]; then sed -i -n '1p;5p;13p' "$CONFIGS"; fi
fi

run_one() {   # one config: name|overrides ; never fails the sweep (the summary lists failures)
  local name=${1%%|*} overrides=${1#*|}
  local t0=$(date +%s)
  echo "[sweep] start $name"
  # shellcheck disable=SC2086
  if $PYTHON -m training.train model=sasrec $overrides $COMMON paths.artifacts="$ART" \
        trainer.run_dir="$OUT/runs/$name" hydra.run.dir="$OUT/hydra/$name" > "$OUT/logs/$name.log" 2>&1; then
    echo "[sweep] done  $name in $(( $(date +%s) - t0 )) s: $(tail -n 1 "$OUT/logs/$name.log")"
    case "$name" in *_shift1) ;; *) rm -rf "$OUT/runs/$name/checkpoints";; esac  # keep what comes back small
  else
    echo "[sweep] FAILED $name after $(( $(date +%s) - t0 )) s: $(tail -n 1 "$OUT/logs/$name.log")"
  fi
}
export -f run_one
export PYTHON COMMON OUT ART

mkdir -p "$OUT/logs" "$OUT/runs"
echo "[sweep] $(wc -l < "$CONFIGS") configs, $PARALLEL at a time, python=$PYTHON, out=$OUT"
"$PYTHON" -c "import torch; print('[sweep] torch', torch.__version__, 'cuda', torch.cuda.is_available())"
tr '\n' '\0' < "$CONFIGS" | xargs -0 -P "$PARALLEL" -I{} bash -c 'run_one "$@"' _ {} &
wait

if [ "$SET" = quality ]; then   # the refit curve on the shifted runs (their "test" = the real validation targets)
  for run in "$OUT"/runs/*_shift1; do
    [ -f "$run/metrics.json" ] || continue
    echo "[sweep] refit curve $(basename "$run")"
    $PYTHON -m training.refit --run "$run" --epochs 0 1 2 3 4 6 8 10 --threads 1 \
      > "$OUT/logs/refit_$(basename "$run").log" 2>&1 || echo "[sweep] refit FAILED $(basename "$run")"
    # its control: the same epochs on the training sequences only (the gain of the new targets vs more epochs)
    $PYTHON -m training.refit --run "$run" --epochs 0 6 10 --control --threads 1 \
      > "$OUT/logs/refit_control_$(basename "$run").log" 2>&1 || echo "[sweep] refit control FAILED $(basename "$run")"
    rm -rf "$run/checkpoints"
  done
fi

"$PYTHON" - "$OUT" "$CONFIGS" <<'EOF'
import json, sys
from pathlib import Path
out, configs = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for line in configs.read_text().splitlines():
    name, _, overrides = line.partition("|")
    f = out / "runs" / name / "metrics.json"
    if not f.exists():
        log = out / "logs" / f"{name}.log"
        tail = log.read_text().splitlines()[-3:] if log.exists() else []
        rows.append({"name": name, "status": "failed", "overrides": overrides, "log_tail": tail})
        continue
    m = json.loads(f.read_text())
    rows.append({"name": name, "status": "ok", "data": m.get("data"), "overrides": overrides,
                 **{k: m.get(k) for k in ("valid/ndcg@10", "valid/hr@10", "test/ndcg@10", "test/hr@10",
                                          "test/ndcg@20", "test/hr@20", "best_epoch", "epochs", "time_to_best_s",
                                          "train_time_s", "epoch_time_s", "device", "stopped_early")}})
ok = [r for r in rows if r["status"] == "ok"]
ok.sort(key=lambda r: (r["data"], -(r["valid/ndcg@10"] or 0)))
print(f"\n{'config':<24}{'data':<15}{'valid_ndcg10':>13}{'valid_hr10':>11}{'test_ndcg10':>12}{'test_hr10':>10}{'best_ep':>8}{'epochs':>7}{'t_best_s':>9}")
for r in ok:
    print(f"{r['name']:<24}{r['data']:<15}{r['valid/ndcg@10']:>13.4f}{r['valid/hr@10']:>11.4f}{r['test/ndcg@10']:>12.4f}"
          f"{r['test/hr@10']:>10.4f}{r['best_epoch'] or 0:>8}{r['epochs'] or 0:>7}{r['time_to_best_s'] or 0:>9.1f}")
for r in rows:
    if r["status"] != "ok":
        print(f"FAILED {r['name']}: {' | '.join(r['log_tail'])}")
best = {}
for r in ok:
    best.setdefault(r["data"], r)
summary = {"sorted_by": "valid/ndcg@10 within each dataset", "results": ok,
           "failed": [r for r in rows if r["status"] != "ok"],
           "best_by_valid": {d: {"name": r["name"], "overrides": r["overrides"]} for d, r in best.items()}}
(out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
# quality set: each candidate's relative gain over the defaults on each validation set, ranked by the smaller one
by = {r["name"]: r for r in ok}
both = []
for name in sorted(by):
    if not name.startswith("qt_") or name.endswith(("_base", "_shift1")):
        continue
    cand = name[3:]
    t, s, tb, sb = by.get(f"qt_{cand}"), by.get(f"qs_{cand}"), by.get("qt_base"), by.get("qs_base")
    if not (t and s and tb and sb):
        continue
    if not (tb["valid/ndcg@10"] > 0 and sb["valid/ndcg@10"] > 0):   # smoke runs: nothing learned yet
        continue
    gt = t["valid/ndcg@10"] / tb["valid/ndcg@10"] - 1
    gs = s["valid/ndcg@10"] / sb["valid/ndcg@10"] - 1
    both.append({"candidate": cand, "overrides": t["overrides"].split(" ", 1)[1], "toys_valid_gain": round(gt, 4),
                 "sports_valid_gain": round(gs, 4), "min_gain": round(min(gt, gs), 4), "wins_on_both": gt > 0 and gs > 0})
both.sort(key=lambda r: -r["min_gain"])
refit = {f.parent.name: json.loads(f.read_text()) for f in sorted((out / "runs").glob("*_shift1/refit_curve.json"))}
control = {f.parent.name: json.loads(f.read_text()) for f in sorted((out / "runs").glob("*_shift1/refit_control_curve.json"))}
if both or refit:
    print(f"\n{'candidate':<20}{'toys_gain':>10}{'sports_gain':>12}{'both':>6}")
    for r in both:
        print(f"{r['candidate']:<20}{r['toys_valid_gain']:>10.3f}{r['sports_valid_gain']:>12.3f}{str(r['wins_on_both']):>6}")
    for name, c in refit.items():
        print(f"refit curve {name}: " + ", ".join(f"{r['refit_epochs']}: {r['shifted_test/ndcg@10']:.4f}" for r in c["curve"]))
    for name, c in control.items():
        print(f"control curve {name}: " + ", ".join(f"{r['refit_epochs']}: {r['shifted_test/ndcg@10']:.4f}" for r in c["curve"]))
    summary["both_datasets"] = both
    summary["refit_curves"] = refit
    summary["refit_control_curves"] = control
    (out / "sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
toys = [r for r in ok if r["name"].startswith("t")]
(out / "best_toys_overrides.txt").write_text((toys[0]["overrides"].split(" ", 1)[1] if toys else "") + "\n")
print(json.dumps({"best_by_valid": summary["best_by_valid"], "both_datasets": both[:3],
                  "best_refit_epochs": {k: v.get("best_refit_epochs") for k, v in refit.items()}}))
EOF
if [ "$SET" = quality ]; then echo "[sweep] summary in $OUT/sweep.json"; exit 0; fi

# Speed: the plain SASRec against the best Toys config, alone on the GPU (after the sweep).
BEST=$(cat "$OUT/best_toys_overrides.txt")
echo "[sweep] bench_train: plain vs best Toys config ($BEST)"
# shellcheck disable=SC2086
"$PYTHON" scripts/bench_train.py --data "$TOYS" $BENCH_ARGS paths.artifacts="$ART" paths.runs="$OUT/bench_runs" \
  --variant "plain=$PLAIN" --variant "best=$BEST" > "$OUT/bench_train.log" 2>&1 || echo "[sweep] bench_train FAILED"
grep -v -e "^\[20" -e "Warning" -e "warn" "$OUT/bench_train.log" | tail -n 8 || true
tail -n 1 "$OUT/bench_train.log" > "$OUT/bench_train.json" || true
rm -rf "$OUT"/bench_runs/*/*/*/checkpoints
echo "[sweep] summary in $OUT/sweep.json, speed in $OUT/bench_train.json"
wait
