#!/usr/bin/env bash
# After the pre-training runs (remote.sh finish): AE on held-out TEST documents for each
# run, then SQuAD: fine-tune ICAE (EPL, linspace) and the plain LLM, and evaluate them with
# the untrained base (full context), the pre-trained-only ICAE and the same-budget
# truncation baseline. Usage: finish.sh STORE [overrides...]
set -uo pipefail
STORE=$1; shift
COMMON="$*"
CFG=configs/smollm2-icae.yaml
SQUAD_N=${SQUAD_N:-2000}
FT_SECONDS=${FT_SECONDS:-150}
ev() {  # name, overrides...
  local name=$1; shift
  python3 -m icae evaluate --config $CFG $COMMON "$@" evaluation.output_dir=results/eval/$name \
    > results/eval-$name.log 2>&1 || { echo "FAILED eval $name"; tail -5 results/eval-$name.log; }
  echo "== $name"; cat results/eval/$name/summary.json 2>/dev/null | head -c 600; echo
}
mkdir -p results/eval
# Held-out test documents (never trained or tuned on): 49 spans of the training length.
python3 -m icae prepare-data --config $CFG $COMMON data.prepared_dir=$STORE/prepared-test \
  data.build=[pretrain] "data.pretrain.sources=[{path: $STORE/data/test.jsonl.gz}]" \
  "data.pretrain.eval_sources=[{path: $STORE/data/test.jsonl.gz}]" data.pretrain.eval_size=64 \
  > results/prepare-test.log 2>&1
for run in epl-dec:epl:true epl-frozen:epl:false linspace-dec:linspace:true; do
  IFS=: read name layout dec <<< "$run"
  [ -f results/$name/pretrain/checkpoint.json ] || { echo "no checkpoint for $name"; continue; }
  ev ae-test-$name evaluation.task=ae evaluation.checkpoint=results/$name/pretrain \
    data.prepared_dir=$STORE/prepared-test model.position_layout=$layout \
    model.train_decoder=$dec evaluation.batch_size=49 &
done
wait
# SQuAD fine-tuning: three runs side by side on the GPU.
ft() {  # name, overrides...
  local name=$1; shift
  python3 -m icae finetune --config $CFG $COMMON "$@" finetune.output_dir=results/ft/$name \
    finetune.resume_dir=results/ft/$name.resume finetune.max_train_seconds=$FT_SECONDS \
    > results/ft-$name.log 2>&1 || { echo "FAILED ft $name"; tail -5 results/ft-$name.log; }
}
mkdir -p results/ft
ft icae-epl finetune.init_checkpoint=results/epl-dec/pretrain &
ft icae-linspace finetune.init_checkpoint=results/linspace-dec/pretrain \
  model.position_layout=linspace &
ft llm model.model_type=llm model.train_decoder=false &
wait
Q="evaluation.task=qa evaluation.num_samples=$SQUAD_N"
ev qa-base $Q model.model_type=llm model.train_decoder=false &
ev qa-llm-ft $Q model.model_type=llm model.train_decoder=false evaluation.checkpoint=results/ft/llm &
ev qa-truncate $Q model.model_type=llm model.train_decoder=false evaluation.baseline=truncate \
  evaluation.checkpoint=results/ft/llm &
wait
ev qa-icae-pretrained $Q evaluation.checkpoint=results/epl-dec/pretrain &
ev qa-icae-ft-epl $Q evaluation.checkpoint=results/ft/icae-epl &
ev qa-icae-ft-linspace $Q evaluation.checkpoint=results/ft/icae-linspace model.position_layout=linspace &
wait
tar czf results/ft-logs.tgz results/ft/*/log.csv results/ft/*/checkpoint.json 2>/dev/null
