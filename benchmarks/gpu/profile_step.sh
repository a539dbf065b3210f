#!/usr/bin/env bash
# Run ON THE GPU MACHINE, carrying .gpu/d (stage_here.sh), any machine state (random
# weights of SmolLM2-135M's shape; no GGUF needed; MODEL_DIR=<a prepared model> instead of
# .gpu/d/smollm2: `remote.sh profile` after setup). One call (~2 minutes): where the time
# of one pre-training step goes in the setting (512-token spans, 128 slots, rate 4,
# frozen decoder, LoRA r128 on q/v, bf16), micro-batch 64, compiled layers and eager:
# torch.profiler's operator table by device time, headed by the wall clock (its "Self CUDA
# time total" over the wall: the share of the time the GPU is busy; far below 100%: host-bound). The step is `icae benchmark`'s
# (the model's forward + backward + AdamW, no Trainer, no data loader): set against the
# Trainer's steady rate in speed.sh, the difference is what the training loop around the
# step costs. Everything lands in $OUT.
set -uo pipefail
MODEL_DIR=${MODEL_DIR:-.gpu/d/smollm2}
OUT=${OUT:-results/profile}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
for mode in compiled eager; do
  flag=$([ $mode = compiled ] && echo --compile)
  timeout ${STEP_TIMEOUT:-100} python3 benchmarks/gpu_benchmark.py --model-config $MODEL_DIR \
    --tokenizer $MODEL_DIR --mem-size 128 --rate 4 --context 512 --batch ${BATCH:-64} \
    --steps ${STEPS:-6} --modes ours $flag --profile "$OUT/$mode" --out "$OUT/step-$mode.json" \
    > "$OUT/step-$mode.log" 2>&1
  grep -h 'examples_per_s\|mfu\|peak_gpu\|Error' "$OUT/step-$mode.log" | tr -s ' '
  head -25 "$OUT/$mode/profile-ours.txt" 2>/dev/null | cut -c1-200
done
