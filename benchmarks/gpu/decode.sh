#!/usr/bin/env bash
# Run ON THE GPU MACHINE, carrying .gpu/d (stage_here.sh), any machine state: what issue
# 13's inference benchmark left unmeasured on 2026-12-02 (random Qwen3-1.7B weights):
#   1. the memory-cache evaluation test, which failed there only for want of nltk;
#   2. the decode step compiled by torch.compile before its CUDA-graph capture
#      (--compile-step; qa at 4k, batch 1, both sides);
#   3. the qa cases the goals preset's time budget skipped: 1k and 16k contexts at
#      batch 1 and 8, 4k at batch 8 (static cache, CUDA graphs, not compiled).
# Results in $OUT (brought back).
set -uo pipefail
D=.gpu/d
OUT=${OUT:-results/decode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls $D/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/shapes-site $D/whl/*.whl && export PYTHONPATH=/tmp/shapes-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/card.txt"
timeout 90 python3 -m pytest -q -rf --tb=short -p no:cacheprovider \
  tests/test_evaluate_inference.py > "$OUT/cuda-tests.txt" 2>&1
tail -3 "$OUT/cuda-tests.txt"
bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/inference_benchmark.py --shape qwen3-1.7b \
    --tokenizer $D/qwen3 "$@" --out "$OUT/inference-$name.json" > "$OUT/inference-$name.log" 2>&1
  echo "== $name (rc $?)"; tail -25 "$OUT/inference-$name.log"
}
bench compiled ${COMPILED_TIMEOUT:-300} --scenarios qa --contexts 4096 --batches 1 \
  --new-tokens 32 --repeats 3 --compile-step
bench grid ${GRID_TIMEOUT:-200} --scenarios qa --contexts 1024,4096,16384 --batches 1,8 \
  --new-tokens 32 --repeats 3 --time-budget ${GRID_BUDGET:-170}
ls -la "$OUT"
