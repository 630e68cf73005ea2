# Sourced by demo.sh and test.sh: create .venv if missing and install the project into it.
# torch 2.13.0 (CPU) goes in first so pip does not pull a multi-GB CUDA build.
# Set SHOPREC_EXTRA=gpu for faiss-gpu + onnxruntime-gpu instead of the CPU builds.
PY=${PYTHON:-python3}
EXTRA=${SHOPREC_EXTRA:-cpu}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last install.
stamp=.venv/.shoprec-installed-$(sha256sum pyproject.toml | cut -c1-16)-$EXTRA
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.11,<2.15"
  .venv/bin/python -m pip install -q -e ".[$EXTRA,dev]"
  rm -f .venv/.shoprec-installed-*
  touch "$stamp"
fi
source .venv/bin/activate
