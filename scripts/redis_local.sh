#!/usr/bin/env bash
# A local redis-server for the demo and benchmarks (appendonly yes + appendfsync always, loopback only).
#   scripts/redis_local.sh start [DIR] [PORT]   # prints redis://127.0.0.1:PORT/0 (default artifacts/redis, 6390)
#   scripts/redis_local.sh stop  [DIR]
# Then: python -m serving.run serve.store.kind=redis serve.store.url=redis://127.0.0.1:6390/0
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?usage: scripts/redis_local.sh start|stop [DIR] [PORT]}
dir=${2:-artifacts/redis}
port=${3:-6390}
case "$action" in
  start) exec python -m serving.redis_local start --dir "$dir" --port "$port" ;;
  stop) exec python -m serving.redis_local stop --dir "$dir" ;;
  *) echo "usage: scripts/redis_local.sh start|stop [DIR] [PORT]" >&2; exit 2 ;;
esac
