#!/usr/bin/env bash
# The GPU check (python -m runtime.gpucheck, its docstring says what it checks), bounded to 8 minutes:
#   scripts/gpu-check.sh [OUT] [--dry] [--only NAME,...]     results.json, log.txt, bench.json in OUT
# (default $OUT, else build/gpu-check). Python: .venv's if there is one, else python3 (torch with CUDA,
# numpy and cuda-python installed). PyAV, safetensors and tqdm, which the runtime imports, are
# installed from wheels in $GPUCHECK_WHEELS (default build/gpucheck-wheels, made here by
# `make gpucheck-wheels`) when the machine lacks them and has no package index.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-build/gpu-check}"
if [[ $# -gt 0 && "$1" != --* ]]; then OUT_DIR="$1"; shift; fi
mkdir -p "$OUT_DIR"
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
WHEELS="${GPUCHECK_WHEELS:-build/gpucheck-wheels}"
if ! "$PY" -c "import av, safetensors, tqdm" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --target "$OUT_DIR/deps" "$WHEELS"/*.whl
        export PYTHONPATH="$PWD/$OUT_DIR/deps${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "warning: PyAV, safetensors or tqdm is missing and there are no wheels in $WHEELS" >&2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT_DIR/log.txt" >&2 || true
nvidia-smi >> "$OUT_DIR/log.txt" 2>&1 || true
exec timeout --kill-after=10 480 "$PY" -m runtime.gpucheck --out "$OUT_DIR" --budget-s 450 "$@"
