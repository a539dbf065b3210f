#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `START=0 EXTRA_PROFILES="s128 s2x128" remote.sh setup`
# (`remote.sh sweep` starts it in the background; `remote.sh wait S` follows it): SQuAD
# fine-tuning of the shipped checkpoint to the end of its schedule, side by side:
#   icae-lr2e-4       configs/smollm2-icae.yaml's finetune section as it is (2 epochs)
#   icae-lr1e-3       the same at the pre-training learning rate
#   s2x128 chain      PRE_SECONDS more pre-training of the shipped checkpoint on 150-250-token
#                     spans (two segments, as SQuAD paragraphs are), AE/LM 50/50, then the
#                     same fine-tuning as icae-lr1e-3 (icae-s2x128-lr1e-3)
# Each fine-tuned model is evaluated on the first SQUAD_N dev questions as soon as it ends;
# the shipped and the s2x128 checkpoints also on held-out TEST documents cut into 2-segment
# spans (AE). Results: results/eval/*/summary.json, logs results/*.log, results/ft/*/log.csv.
# Usage: ft_sweep.sh STORE [overrides shared by every command...]
FT_SECONDS=${FT_SECONDS:-600}
source benchmarks/gpu/sweep_common.sh "$@"
PRE_SECONDS=${PRE_SECONDS:-240}
S2="$(profile s2x128) data.prepared_dir=$STORE/prepared-s2x128"
mkdir -p results/s2x128
# Held-out test documents cut into two-segment spans, for the AE evaluations.
python3 -m icae prepare-data --config $CFG $COMMON $(profile s2x128) \
  data.prepared_dir=$STORE/prepared-test-s2x128 data.build=[pretrain] \
  "data.pretrain.sources=[{path: $STORE/data/test.jsonl.gz}]" \
  "data.pretrain.eval_sources=[{path: $STORE/data/test.jsonl.gz}]" data.pretrain.eval_size=64 \
  > results/prepare-test-s2x128.log 2>&1 || say "FAILED prepare-test-s2x128"
AE2="evaluation.task=ae $(profile s2x128) data.prepared_dir=$STORE/prepared-test-s2x128 evaluation.batch_size=64"

ft_eval icae-lr2e-4 finetune.init_checkpoint=$SHIPPED &
ft_eval icae-lr1e-3 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) &
(
  ev ae2-test-shipped $AE2 evaluation.checkpoint=$SHIPPED
  pre() {  # compile_layers on or off; resumes from the last periodic save
    python3 -m icae pretrain --config $CFG $COMMON $S2 pretrain.init_checkpoint=$SHIPPED \
      data.pretrain.ae_only_examples=0 data.pretrain.lm_ratio_ramp_examples=0 \
      pretrain.max_steps=100000 pretrain.save_steps=50 pretrain.eval_steps=100 \
      pretrain.output_dir=results/s2x128/pretrain pretrain.resume_dir=results/s2x128/resume \
      "$@" >> results/s2x128/pretrain.log 2>&1
  }
  t0=$(date +%s)
  say "pretrain s2x128 starts (compiled layers)"
  if ! pre pretrain.compile_layers=true pretrain.max_train_seconds=$PRE_SECONDS; then
    # Compiled blocks under the periodic AE decoding have not run on a GPU before: should
    # they fail, the eager run resumes from the last save for the time that is left.
    left=$(( PRE_SECONDS - ($(date +%s) - t0) ))
    say "FAILED compiled s2x128 pre-training; eager for the remaining ${left}s"
    grep -m3 'Error' results/s2x128/pretrain.log
    [ "$left" -gt 30 ] && pre pretrain.compile_layers=false pretrain.max_train_seconds=$left
  fi
  say "pretrain s2x128 ended: $(grep '^\[step' results/s2x128/pretrain.log | tail -1 | cut -c1-200)"
  if [ -f results/s2x128/pretrain/checkpoint.json ]; then
    ev ae2-test-s2x128 $AE2 evaluation.checkpoint=results/s2x128/pretrain &
    ft_eval icae-s2x128-lr1e-3 finetune.init_checkpoint=results/s2x128/pretrain $(lr 1e-3)
    wait
  fi
) &
wait
say "sweep done"
