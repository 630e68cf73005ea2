#!/usr/bin/env bash
# The main job end to end, on the real data in ../shared/data (synthetic data where it is absent):
#   prepare -> train -> export -> index -> ranker + bought-together -> profiles -> campaign audience
#   -> serve -> query -> stop -> campaign evaluation -> quality table
# Creates .venv if missing and installs the project first (idempotent: a second run reuses it).
# Everything is written under artifacts/ (SHOPREC_ARTIFACTS moves it). Takes about 10-15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_system_deps.sh
source scripts/_venv.sh

export RAY_AUTH_MODE=disabled PYTHONWARNINGS=ignore HYDRA_FULL_ERROR=1
export SHOPREC_PSEUDO_KEY=${SHOPREC_PSEUDO_KEY:-demo-pseudonymisation-key}
export SHOPREC_API_KEYS=${SHOPREC_API_KEYS:-demo-key}
export SHOPREC_ADMIN_KEYS=${SHOPREC_ADMIN_KEYS:-demo-admin}
DATA_ROOT=${SHOPREC_DATA_ROOT:-../shared/data}
ART=${SHOPREC_ARTIFACTS:-artifacts}
PORT=${SHOPREC_DEMO_PORT:-8000}
mkdir -p "$ART"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ -f "$DATA_ROOT/online-retail/online_retail_2010_2011.parquet" ]; then
  RETAIL=online_retail; SEQ=amazon_toys; REAL=1
  echo "real data found in $DATA_ROOT"
else
  RETAIL=synthetic; SEQ=synthetic; REAL=0
  echo "no real data in $DATA_ROOT: using the seeded synthetic generator"
fi

step "1. prepare: raw files -> clean events, items, users, splits, quarantine, manifest"
python -m features.prepare data=$RETAIL
[ "$SEQ" != "$RETAIL" ] && python -m features.prepare data=$SEQ
python -m features.summary data=$RETAIL

step "2. train: SASRec on $SEQ (short CPU run; the full run is 'python -m training.train model=sasrec data=$SEQ trainer=gpu')"
# A small SASRec (32-d, 1 block) on 3,000 users for 3 epochs, against popularity on the same users.
SMALL="trainer=cpu trainer.max_users=3000 trainer.eval.sampled_negatives=0"
python -m training.train model=sasrec data=$SEQ $SMALL trainer.max_epochs=3 model.lr=0.003 model.max_len=20 \
  model.hidden=32 model.blocks=1 model.heads=1 model.dropout=0.2 model.emb_dropout=0.2 model.label_smoothing=0.0 \
  model.weight_decay=0.0 trainer.run_dir="$ART/runs/$SEQ/sasrec/demo"
python -m training.train model=pop data=$SEQ $SMALL trainer.run_dir="$ART/runs/$SEQ/pop/demo"

step "3. train + export the retriever for the shop: two-tower on $RETAIL (temporal split)"
python -m training.train model=two_tower data=$RETAIL trainer=cpu trainer.eval.split=temporal \
  trainer.max_epochs=2 model.batch_size=64 trainer.run_dir="$ART/runs/$RETAIL/two_tower/demo"
python -m training.export run="$ART/runs/$RETAIL/two_tower/demo"
BUNDLE="$ART/bundles/$(cat "$ART/bundles/LATEST")"
echo "bundle: $BUNDLE"

step "4. index: FAISS index of the item embeddings inside the bundle"
python -m serving.build_index bundle="$BUNDLE" index=hnsw
BUNDLE="$ART/bundles/$(cat "$ART/bundles/LATEST")"   # a new version: the export + index/ (bundles never change)

step "5. ranker (DCN-v2 on the retriever's own candidates; a new bundle version) + bought-together rules"
# Same entry point, trainer group, loggers and callbacks as every model; refuses a retriever trained on another split.
python -m training.train model=ranker data=$RETAIL trainer=cpu model.retriever_bundle="$BUNDLE" \
  trainer.run_dir="$ART/runs/$RETAIL/ranker/demo"
python -m features.baskets data=$RETAIL
python -m serving.publish_rules data=$RETAIL

step "6. profiles and segments; behaviour analytics (funnels, cart abandonment, time to purchase, paths, repeat purchases)"
python -m features.profile data=$RETAIL
python -m features.analytics data=$RETAIL
if [ "$REAL" = 1 ]; then
  python -m features.prepare data=taobao
  python -m features.profile data=taobao profile=short_horizon
  python -m features.analytics data=taobao
fi

step "7. campaign audiences: response model (win-back); uplift model learnt from a past campaign (Hillstrom)"
python scripts/build_audience.py campaign=winback
if [ -f "$DATA_ROOT/hillstrom/hillstrom.csv" ] || ls "$DATA_ROOT"/hillstrom/*.csv >/dev/null 2>&1; then
  # the past e-mail campaign's randomised outcomes train the uplift model; the next campaign targets the same
  # customers by expected incremental profit, keeps a random control group and never mails negative-effect users
  python -m training.campaigns.hillstrom_profiles
  python -m training.uplift --config-name uplift/hillstrom_campaign
  python scripts/build_audience.py campaign=hillstrom_next
fi

step "8. serve, query, stop"
LOG="$ART/serve.log"
python -m serving.run serve.port=$PORT > "$LOG" 2>&1 &
SERVE=$!
trap 'kill -TERM $SERVE 2>/dev/null || true; wait $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "localhost:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $SERVE 2>/dev/null || { echo "service exited:"; tail -n 20 "$LOG"; exit 1; }
  sleep 1
done
H=(-H "X-API-Key: $SHOPREC_API_KEYS" -H "content-type: application/json")
USER_ID=$(python - "$DATA_ROOT" "$REAL" <<'EOF'
import sys
import pandas as pd
if sys.argv[2] == "1":   # a real storefront customer id (raw key: the service pseudonymises it)
    df = pd.read_parquet(f"{sys.argv[1]}/online-retail/online_retail_2010_2011.parquet", columns=["CustomerID"])
    print(int(df.CustomerID.dropna().value_counts().index[5]))
else:
    print("u1")
EOF
)
ITEM_ID=$(python -c "import pandas as pd; print(pd.read_parquet('$BUNDLE/items.parquet').sort_values('popularity').item_key.iloc[-1])")
set -x
curl -s "localhost:$PORT/v1/recommendations" "${H[@]}" -d "{\"user_id\":\"$USER_ID\",\"k\":5}"; echo
curl -s "localhost:$PORT/v1/recommendations" "${H[@]}" -d '{"user_id":"new-visitor","k":5,"context":{"price_max":5}}'; echo
curl -s -X POST "localhost:$PORT/v1/events" "${H[@]}" -d "{\"user_id\":\"new-visitor\",\"item_id\":\"$ITEM_ID\",\"event\":\"view\"}"; echo
curl -s "localhost:$PORT/v1/recommendations" "${H[@]}" -d '{"user_id":"new-visitor","k":5}'; echo
curl -s "localhost:$PORT/v1/items/$ITEM_ID/similar?k=5" -H "X-API-Key: $SHOPREC_API_KEYS"; echo
curl -s -X POST "localhost:$PORT/v1/campaigns/winback/score" "${H[@]}" -d "{\"user_ids\":[\"$USER_ID\"]}"; echo
curl -s -o /dev/null -w "no key -> %{http_code}\n" "localhost:$PORT/v1/recommendations" -d '{"user_id":"x","k":5}'
curl -s "localhost:$PORT/metrics" | grep -m 5 shoprec_ || true
curl -s "localhost:$PORT/readyz"; echo   # where encoder, retrieval and ranker run, and why
curl -s -o /dev/null -w "console login page -> %{http_code}\n" "localhost:$PORT/console"
set +x
kill -TERM $SERVE; wait $SERVE 2>/dev/null || true
trap - EXIT

step "9. campaign readout and the quality table"
if [ "$REAL" = 1 ]; then
  # Backtest: the audience as of 2011-09-01, outcomes from the real purchases after it. Nothing was sent,
  # so treatment and control differ by chance only: every interval must cover zero (an A/A check).
  python -m training.campaigns.backtest campaign=winback campaign.job.backtest_cutoff=2011-09-01
else
  python scripts/evaluate_campaign.py campaign=winback outcomes=simulate
fi
python scripts/bench_quality.py

step "10. privacy: forget one customer everywhere, prove it, verify the audit chain"
if [ "$REAL" = 1 ]; then
  python scripts/bench_forget.py --user 12347 --artifacts "$ART" --in-place | tail -n 4
else
  python -m features.forget user=u2 | tail -n 3
fi
python -m serving.audit verify

step "11. operations: bundle versions, drift against the bundle's training data, backup"
python -m serving.bundles list
if [ "$REAL" = 1 ]; then
  # the months after the training cut-off, replayed against the served bundle's reference distributions
  python -m serving.drift --bundles "$ART/bundles" --processed "$ART/processed/$RETAIL" --from 2011-10-08 --window daily \
    --out "$ART/reports/drift" | tail -n 12 || true
fi
# a backup taken after the forget: an older backup still holds the user (docs/operations.md)
python -m serving.backup backup --to "$ART/backups" --parts bundles,privacy,audit | tail -n 3

step "done: everything is under $ART/"
echo "console: http://localhost:$PORT/console  (start the service: python -m serving.run serve.port=$PORT;"
echo "         sign in with the admin key \$SHOPREC_ADMIN_KEYS or an analyst key from \$SHOPREC_API_KEYS)"
