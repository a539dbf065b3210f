#!/usr/bin/env bash
# After the pre-training runs (remote.sh finish): AE on held-out TEST documents for every
# run that has a final checkpoint, then SQuAD: fine-tune ICAE from run $BEST and the plain
# LLM, and evaluate them with the untrained base (full context), the pre-trained-only ICAE
# and the same-budget truncation baseline (the slots $BEST would use, as text).
# PRETRAINED (default results/$BEST/pretrain) is the pre-trained ICAE that is fine-tuned,
# e.g. the shipped checkpoints/smollm2-135m-icae with RUNSET=2026-12-02-squad BEST=shipped.
# Usage: STORE=... BEST=<run> RUNSET=... [SQUAD=0] [SHIPPED_AE=1] finish.sh STORE [overrides...]
FT_SECONDS=${FT_SECONDS:-150}
source benchmarks/gpu/sweep_common.sh "$@"
PRETRAINED=${PRETRAINED:-results/$BEST/pretrain}
# Held-out test documents (never trained or tuned on), cut at each profile's span length.
for prof in $(profiles); do
  python3 -m icae prepare-data --config $CFG $COMMON $(profile $prof) \
    data.prepared_dir=$STORE/prepared-test-$prof data.build=[pretrain] \
    "data.pretrain.sources=[{path: $STORE/data/test.jsonl.gz}]" \
    "data.pretrain.eval_sources=[{path: $STORE/data/test.jsonl.gz}]" data.pretrain.eval_size=64 \
    > results/prepare-test-$prof.log 2>&1 &
done
wait
for name in $(run_names); do
  [ -f results/$name/pretrain/checkpoint.json ] || { echo "no checkpoint for $name"; continue; }
  args=$(run_args $name)
  prof=$(echo "$args" | grep -o 'prepared-s[0-9]*' | head -1 | sed 's/prepared-//')
  ev ae-test-$name evaluation.task=ae evaluation.checkpoint=results/$name/pretrain $args \
    data.prepared_dir=$STORE/prepared-test-$prof evaluation.batch_size=64 &
done
# SHIPPED_AE=1: the shipped checkpoint on the same held-out spans (same card and code).
[ "${SHIPPED_AE:-0}" = 1 ] && ev ae-test-shipped evaluation.task=ae \
  evaluation.checkpoint=checkpoints/smollm2-135m-icae $(profile s128) \
  data.prepared_dir=$STORE/prepared-test-s128 evaluation.batch_size=64 &
# SQUAD=0: the held-out autoencoding only.
[ "${SQUAD:-1}" = 0 ] && { wait; exit 0; }
# SQuAD fine-tuning, side by side on the GPU.
B=$(run_args $BEST)
ft icae-$BEST $B finetune.init_checkpoint=$PRETRAINED &
ft llm $B $LLM &
wait
Q="evaluation.task=qa evaluation.num_samples=$SQUAD_N"
ev qa-base $Q $B $LLM &
ev qa-llm-ft $Q $B $LLM evaluation.checkpoint=results/ft/llm &
ev qa-truncate $Q $B $LLM evaluation.baseline=truncate evaluation.checkpoint=results/ft/llm &
ev qa-icae-pretrained $Q $B evaluation.checkpoint=$PRETRAINED &
ev qa-icae-ft $Q $B evaluation.checkpoint=results/ft/icae-$BEST &
wait
