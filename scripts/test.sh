#!/usr/bin/env bash
# Creates .venv if missing, installs the project (CPU extra + dev tools), runs the tests.
# Idempotent: a second run reuses the venv. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_system_deps.sh
source scripts/_venv.sh
export RAY_AUTH_MODE=disabled
python -m pytest "$@"
