# Sourced by demo.sh and test.sh: create the venv if missing and install the project into it.
#   SHOPREC_EXTRA=cpu (default): CPU builds of torch, FAISS and ONNX Runtime.
#   SHOPREC_EXTRA=gpu: one CUDA version (13.0) throughout: torch's CUDA build, onnxruntime-gpu with its CUDA and
#                      cuDNN libraries, FAISS on the CPU (pyproject.toml says why). Falls back to the CPU by itself
#                      where no GPU is present.
#   SHOPREC_VENV: the venv folder (default .venv).
# The two extras install the same module names (faiss, onnxruntime): switching uninstalls the other one first.
PY=${PYTHON:-python3}
EXTRA=${SHOPREC_EXTRA:-cpu}
VENV=${SHOPREC_VENV:-.venv}
case "$EXTRA" in cpu|gpu) ;; *) echo "SHOPREC_EXTRA=$EXTRA: must be cpu or gpu" >&2; return 2 2>/dev/null || exit 2;; esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Re-install only when pyproject.toml or the extra changed since the last install.
stamp=$VENV/.shoprec-installed-$(sha256sum pyproject.toml | cut -c1-16)-$EXTRA
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ls "$VENV"/.shoprec-installed-* >/dev/null 2>&1 && ! ls "$VENV"/.shoprec-installed-*-"$EXTRA" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall -y -q faiss-cpu faiss-gpu onnxruntime onnxruntime-gpu torch >/dev/null 2>&1 || true
  fi
  if [ "$EXTRA" = gpu ]; then  # torch 2.13.0's PyPI build is CUDA 13.0; a local CPU wheel (+cpu) is refused
    "$VENV/bin/python" -m pip install -q "torch==2.13.0,!=2.13.0+cpu"
  else  # the CPU build first, so that pip does not pull the multi-GB CUDA build
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.11,<2.15"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRA,dev]"
  rm -f "$VENV"/.shoprec-installed-*
  touch "$stamp"
fi
source "$VENV/bin/activate"
