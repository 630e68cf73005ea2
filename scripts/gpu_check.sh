#!/usr/bin/env bash
# One short run on a CUDA machine that exercises the GPU paths and prints their figures:
#   1. training speed (scripts/bench_train.py): time to the plain SASRec's best validation NDCG@10; runs first
#      and alone, so that its timings do not share the GPU with anything
#   2. SASRec training with the shipped defaults (bf16-mixed), GPU full-ranking evaluation, Toys + Sports
#      (in the background while 3 and 4 run)
#   3. exact retrieval with torch on the GPU (fp16/bf16 vs CPU fp32), ranker forward on CUDA, ORT provider,
#      and the serving path in-process on a 1M-item catalogue (scripts/bench_serve_gpu.py)
#   4. audience scoring of 10M synthetic users on the GPU (budget <= 60 s)
#
#   OUT=/some/dir bash scripts/gpu_check.sh          # ~5 min on an H200
#   GPU_CHECK_COMMIT=<sha> ...: the commit measured, when the copy has no .git (the device machine's copy)
#   GPU_CHECK_SMOKE=1 OUT=/tmp/g bash scripts/gpu_check.sh   # tiny sizes, CPU, to catch crashes first
#   BENCH_ONLY=b2048_noclip,b4096_noclip bash scripts/gpu_check.sh   # a subset of the speed variants
#
# The device machine has torch/lightning/pandas/onnxruntime(CPU) but no hydra: carry the wheels
# (hydra-core, omegaconf, antlr4) as the device README says and put them on PYTHONPATH first.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the scripts import the packages (not installed there)
PY=${PYTHON:-python3}
OUT=${OUT:-artifacts/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
PLAIN="model.hidden=64 model.blocks=2 model.heads=1 model.dropout=0.2 model.emb_dropout=0.2 model.optimizer=adam model.lr=0.001 model.weight_decay=0.0 model.batch_size=256 model.use_attributes=false model.label_smoothing=0.0 model.scheduler=constant model.warmup_steps=0 model.ema_decay=0.0 model.refit_epochs=0"
if [ "${GPU_CHECK_SMOKE:-0}" = "1" ]; then
  SIZES=20000; USERS=200000; SERVE_ITEMS=20000; BENCH_TRAINER=cpu; BENCH_ARGS="trainer.max_epochs=1 trainer.max_users=200"; TRAINER="trainer=cpu trainer.max_epochs=1 trainer.max_users=200"; DEV=cpu
else
  SIZES=100000,1000000; USERS=10000000; SERVE_ITEMS=1000000; BENCH_TRAINER=gpu; BENCH_ARGS="trainer.max_time=${BENCH_MAX_TIME:-45} trainer.patience=8"; TRAINER="trainer=gpu trainer.max_time=${TRAIN_MAX_TIME:-200}"; DEV=cuda
fi
"$PY" -c "import torch; print('[gpu_check] torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

echo "[gpu_check] 1/4 training speed: plain SASRec (sets the target valid NDCG) vs the speed variants (bench_train --preset fast)"
# Each variant after plain stops as soon as it reaches plain's best valid NDCG@10 (trainer.stop_at_valid_ndcg).
# shellcheck disable=SC2086
"$PY" scripts/bench_train.py --data amazon_toys --trainer "$BENCH_TRAINER" --preset fast ${BENCH_ONLY:+--only "$BENCH_ONLY"} \
  $BENCH_ARGS paths.runs="$OUT/bench_runs" > "$OUT/bench_train.log" 2>&1 || echo "[gpu_check] bench_train FAILED"
grep -v -i warn "$OUT/bench_train.log" | tail -n 14
echo "[gpu_check] 2/4 (background) SASRec defaults on Toys and Sports ($TRAINER)"
for d in amazon_toys amazon_sports; do
  # shellcheck disable=SC2086
  "$PY" -m training.train model=sasrec data=$d $TRAINER trainer.eval.sampled_negatives=0 \
      trainer.run_dir="$OUT/runs/$d" hydra.run.dir="$OUT/hydra/$d" > "$OUT/train_$d.log" 2>&1 \
    || echo "[gpu_check] train $d FAILED: $(tail -n 2 "$OUT/train_$d.log")" &
done

echo "[gpu_check] 3/4 retrieval + ranker"
"$PY" scripts/gpu_check_retrieval.py --sizes "$SIZES" > "$OUT/retrieval.log" 2>&1 || echo "[gpu_check] retrieval FAILED"
grep -v -i warn "$OUT/retrieval.log" | tail -n 25

echo "[gpu_check] 3b serving path in-process (encoder -> exact GPU retrieval -> ranker -> rules), $SERVE_ITEMS items"
"$PY" scripts/bench_serve_gpu.py --n-items "$SERVE_ITEMS" --requests 1000 > "$OUT/serve_path.log" 2>&1 || echo "[gpu_check] serve path FAILED"
grep -v -i warn "$OUT/serve_path.log" | tail -n 12

echo "[gpu_check] 4/4 audience scoring, $USERS users on $DEV"
"$PY" scripts/bench_audience.py --device "$DEV" --users "$USERS" --repeats 1 > "$OUT/audience.log" 2>&1 || echo "[gpu_check] audience FAILED"
grep -v -i warn "$OUT/audience.log" | tail -n 15

echo "[gpu_check] waiting for the SASRec default runs"
wait
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
res = {}
for d in ("amazon_toys", "amazon_sports"):
    f = out / "runs" / d / "metrics.json"
    if f.exists():
        m = json.loads(f.read_text())
        res[d] = {k: m.get(k) for k in ("valid/ndcg@10", "test/ndcg@10", "test/hr@10", "test/ndcg@20", "test/mrr",
                                         "best_epoch", "epochs", "time_to_best_s", "train_time_s", "device")}
for name in ("retrieval", "serve_path", "audience", "bench_train"):
    lines = (out / f"{name}.log").read_text().strip().splitlines() if (out / f"{name}.log").exists() else []
    try:
        res[name] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        res[name] = {"error": lines[-3:]}
# the headline figures at the top level: the commit measured, the fastest variant's time to the plain
# configuration's best validation NDCG@10 (and which variant), the 10M-user audience time, where each ran
import os, subprocess
commit = os.environ.get("GPU_CHECK_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                             text=True).stdout.strip() or None
variants = (res.get("bench_train") or {}).get("variants") or {}
fast = {n: v for n, v in list(variants.items())[1:] if v.get("reaches_target") and v.get("time_to_target_s")}
best = min(fast, key=lambda n: fast[n]["time_to_target_s"]) if fast else None
aud = res.get("audience") or {}
res = {"commit": commit, "seconds_to_target": fast[best]["time_to_target_s"] if best else None,
       "fastest_variant": best, "audience_seconds": aud.get("seconds_median"), "audience_users": aud.get("users"),
       "audience_device": aud.get("device"), **res}
print(json.dumps(res, default=str))
(out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
PYEOF
find "$OUT/runs" -name "*.ckpt" -delete 2>/dev/null || true
