#!/usr/bin/env bash
# Run ON THE GPU MACHINE, carrying .gpu/d (stage_here.sh), any machine state: random
# weights of real shapes, nothing else needed. One call (~7 minutes):
#   1. the CUDA decoding tests (static cache + CUDA graphs against the dynamic path);
#   2. issue 13's inference goals at Qwen3-1.7B (benchmarks/inference_benchmark.py);
#   3. issue 15's training-step throughput and MFU at Qwen3-1.7B, 2,048-token contexts:
#      ours eager and with compiled layers, against the seed-style step, in one process.
# Everything lands in $OUT (brought back) and results/shapes/.
set -uo pipefail
DEADLINE=$(( $(date +%s) + ${CALL_SECONDS:-560} ))  # later training runs are skipped after it
D=.gpu/d
OUT=${OUT:-results/shapes}
mkdir -p "$OUT" results/shapes
export PYTHONUNBUFFERED=1
if ls $D/whl/*.whl > /dev/null 2>&1; then  # what the image lacks (nltk: BLEU in the tests)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/shapes-site $D/whl/*.whl && export PYTHONPATH=/tmp/shapes-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
# Every failure in full (-rf, short tracebacks) in the file; the summary on stdout.
timeout 150 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_decoding.py \
  tests/test_evaluate_inference.py > "$OUT/cuda-tests.txt" 2>&1
tail -8 "$OUT/cuda-tests.txt"
timeout ${INFER_TIMEOUT:-280} python3 benchmarks/inference_benchmark.py --shape qwen3-1.7b \
  --preset goals --time-budget ${INFER_BUDGET:-220} --tokenizer $D/qwen3 \
  --agent-file $D/trajectories-test.jsonl.gz --out "$OUT/inference-qwen3-1.7b.json" \
  > "$OUT/inference-qwen3-1.7b.log" 2>&1
tail -40 "$OUT/inference-qwen3-1.7b.log"
train() {  # name, gpu_benchmark args...
  local name=$1; shift
  [ $(( $(date +%s) + 150 )) -gt "$DEADLINE" ] && { echo "skipped train-$name: no time left"; return; }
  timeout 200 python3 benchmarks/gpu_benchmark.py --shape qwen3-1.7b --tokenizer $D/qwen3 \
    --mem-size 256 --rate 4 --context 2048 "$@" --out "$OUT/train-$name.json" \
    > "$OUT/train-$name.log" 2>&1
  grep -h '"mode"\|examples_per_s\|mfu\|peak_gpu\|speed-up\|Error' "$OUT/train-$name.log" | tr -s ' '
}
train b4 --batch 4 --steps 6
train b4-compiled --batch 4 --steps 6 --compile --modes ours
train b8-compiled --batch 8 --steps 6 --compile --modes ours
ls -la "$OUT"
