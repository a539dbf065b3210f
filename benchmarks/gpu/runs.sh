# Sourced by remote.sh and finish.sh (needs STORE): the runs of one set and their overrides.
# The runs: benchmarks/gpu/runs/$RUNSET.txt, one "name|data profile|overrides" per line.
RUNSET=${RUNSET:-2026-12-02}
SWEEP="model.lora_r=16 model.lora_alpha=32
  model.lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]
  pretrain.learning_rate=1e-3 pretrain.embedding_learning_rate=1e-3
  data.pretrain.ae_only_examples=40000 data.pretrain.lm_ratio_ramp_examples=20000
  pretrain.eval_steps=100 pretrain.max_steps=100000"
mapfile -t RUNS < <(grep -v '^#' "benchmarks/gpu/runs/$RUNSET.txt" | grep . \
  | sed "s|@SWEEP@|$(echo $SWEEP)|")
# Data profiles: span lengths and the slots that go with them at rate 4 (one segment).
profile() {
  case $1 in
  s128) echo "data.pretrain.min_len=120 data.pretrain.len_jitter=0.066 model.mem_size=32" ;;
  s448) echo "data.pretrain.min_len=448 data.pretrain.len_jitter=0.14 model.mem_size=128" ;;
  # Two segments of up to 128 tokens (32 slots each): SQuAD paragraphs (~176 tokens) are
  # two segments, which 120-token pre-training never shows.
  s2x128) echo "data.pretrain.min_len=200 data.pretrain.len_jitter=0.25 model.mem_size=32" ;;
  *) echo "unknown data profile $1" >&2; exit 2 ;;
  esac
}
run_args() {  # name -> every override of that run (data profile, its prepared data, run's own)
  local spec
  for spec in "${RUNS[@]}"; do
    IFS='|' read -r n prof over <<< "$spec"
    [ "$n" = "$1" ] && { echo "$(profile $prof) data.prepared_dir=$STORE/prepared-$prof $over"; return; }
  done
  echo "no run $1 in $RUNSET" >&2; exit 2
}
run_names() { local spec; for spec in "${RUNS[@]}"; do echo "${spec%%|*}"; done; }
profiles() { local spec; for spec in "${RUNS[@]}"; do IFS='|' read -r _ p _ <<< "$spec"; echo $p; done | sort -u; }


# Shared by finish.sh and the fine-tuning sweeps (which set CFG, COMMON and FT_SECONDS;
# ft_eval also S128 and SQUAD_N, the train-set helpers STORE, S128 and TRAIN_N): one evaluation or one fine-tuning run, its log in
# results/, its failure reported, not fatal.
ev() {  # name, overrides...
  local name=$1; shift
  python3 -m icae evaluate --config $CFG $COMMON "$@" evaluation.output_dir=results/eval/$name \
    > results/eval-$name.log 2>&1 || { echo "FAILED eval $name"; tail -5 results/eval-$name.log; }
  echo "== $name"; head -c 600 results/eval/$name/summary.json 2>/dev/null; echo
}
ft() {  # name, overrides...
  local name=$1; shift
  python3 -m icae finetune --config $CFG $COMMON "$@" finetune.output_dir=results/ft/$name \
    finetune.resume_dir=results/ft/$name.resume finetune.max_train_seconds=$FT_SECONDS \
    > results/ft-$name.log 2>&1 || { echo "FAILED ft $name"; tail -5 results/ft-$name.log; return 1; }
}
lr() { echo "finetune.learning_rate=$1 finetune.embedding_learning_rate=$1"; }
say() { echo "[$(date +%T)] $*"; }
ft_eval() {  # name, overrides... : fine-tune, then the SQuAD dev evaluation of the result
  local name=$1; shift
  say "ft $name starts"
  ft $name $S128 "$@" || return
  say "ft $name ended: $(tail -1 results/ft/$name/log.csv 2>/dev/null)"
  ev qa-$name $S128 evaluation.task=qa evaluation.num_samples=$SQUAD_N \
    evaluation.checkpoint=results/ft/$name "$@"
}
prepare_squadtrain() {  # the training subset as an evaluation set (first TRAIN_N questions)
  python3 -m icae prepare-data --config $CFG $COMMON $(profile s128) data.build=[squad] \
    data.prepared_dir=$STORE/prepared-squadtrain \
    data.squad.eval_file=../shared/data/squad/train-subset-v1.1.json.gz data.squad.eval_size=$TRAIN_N \
    > results/prepare-squadtrain.log 2>&1 || say "FAILED prepare-squadtrain"
}
on_train() {  # name, checkpoint, overrides... : train-set F1 (after prepare_squadtrain)
  local name=$1 ckpt=$2; shift 2
  ev train-$name $S128 data.prepared_dir=$STORE/prepared-squadtrain evaluation.task=qa \
    evaluation.num_samples=$TRAIN_N evaluation.checkpoint=$ckpt "$@"
}
