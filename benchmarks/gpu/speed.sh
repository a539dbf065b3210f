#!/usr/bin/env bash
# Pre-training step throughput of SmolLM2-135M ICAE on the GPU machine, seed-style code
# (the project before the speed work, commit in .gpu/b/old.tar) against ours, in one run.
# Usage: [DIAG=1] [SEED_STEPS="40 120"|none] [SPEED_RUNS="a b"] [BENCH_SECONDS=90] \
#        speed.sh STORE [overrides for our commands...]. Writes results/bench/*.json (and
# with DIAG=1 results/diag/: the training loop's synchronisations and profile).
set -uo pipefail
STORE=$1; shift
COMMON="$*"
# 90 s: compiled runs spend their first ~20-35 s compiling (2026-12-02), which the steady
# rate must leave out.
SECS=${BENCH_SECONDS:-90}
mkdir -p results/bench
# The issue's measured setting: 512-token spans, mem 128, rate 4, EPL, bf16, frozen decoder,
# LoRA r 128 on q/v, AE/LM 50/50, lr 2e-4.
SETTING="model.mem_size=128 model.mean_compression_rate=4 model.position_layout=epl
  model.dtype=bfloat16 model.train_decoder=false model.lora_r=128 model.lora_alpha=32
  model.lora_target_modules=[q_proj,v_proj] data.pretrain.min_len=512 data.pretrain.len_jitter=0.1
  data.pretrain.lm_ratio=0.5 pretrain.learning_rate=2e-4 pretrain.bf16=true
  pretrain.max_steps=100000 pretrain.lr_scheduler_type=constant pretrain.eval_steps=null
  pretrain.save_steps=100000 pretrain.logging_steps=5 pretrain.progress=false
  pretrain.max_train_seconds=$SECS"

# (the AE/LM 50/50 mix from the first step, as the seed-style run has it)
SEED_SETTING="$SETTING pretrain.dataloader_num_workers=4 data.pretrain.ae_only_examples=0
  data.pretrain.lm_ratio_ramp_examples=0"

# 0. With DIAG=1: where the real training loop waits (benchmarks/train_diagnostics.py):
# the synchronising operations of two optimizer steps by call site and a profile of four,
# ours compiled at micro-batch 64 x 2, after 8 steps of compilation and warm-up.
if [ "${DIAG:-0}" = 1 ]; then
  mkdir -p results/diag
  timeout 240 python3 benchmarks/train_diagnostics.py --out results/diag --sync-steps 8:10 \
    --profile-steps 10:14 -- pretrain --config configs/smollm2-icae.yaml $COMMON $SEED_SETTING \
    pretrain.per_device_train_batch_size=64 pretrain.compile_layers=true pretrain.max_steps=14 pretrain.output_dir=results/diag/run \
    pretrain.resume_dir=results/diag/run.resume > results/diag/diag.log 2>&1
  echo "diag rc $?"; head -30 results/diag/syncs.txt 2>/dev/null | cut -c1-400
  head -3 results/diag/profile.txt 2>/dev/null
fi

# 1. seed-style: the old code, its own prepared data (fixed spans), batch 16 (SEED_STEPS=none
# leaves it out, e.g. in a second call on the same machine).
if [ "${SEED_STEPS:-120}" != none ]; then
rm -rf "$STORE/old" && mkdir -p "$STORE/old" && tar xf "$STORE/old.tar" -C "$STORE/old"
cat > "$STORE/old/bench.yaml" <<YAML
run_name: bench-old
model: {model_dir: $STORE/model}
data:
  prepared_dir: $STORE/old/prepared
  build: [pretrain]
  progress: false
  pretrain:
    sources: [{path: $STORE/data/corpus.jsonl.gz}]
    eval_sources: [{path: $STORE/data/eval.jsonl.gz}]
    token_num: 3000000
    eval_size: 8
YAML
OLD_SETTING=$(echo $SETTING | sed 's/pretrain.max_train_seconds=[0-9]*//')
# Its code logs no wall clock, so its steady rate comes from two runs of different length:
# (examples of the longer - of the shorter) / (train_runtime of the longer - of the
# shorter) leaves out the first steps' warm-up (SEED_STEPS="40 120"; one length gives
# only the whole-run rate).
( cd "$STORE/old" && python3 -m icae prepare-data --config bench.yaml $OLD_SETTING >/dev/null 2>&1 )
for steps in ${SEED_STEPS:-120}; do
  ( cd "$STORE/old" && rm -rf out-$steps resume-$steps \
    && timeout $((SECS + 120)) python3 -m icae pretrain --config bench.yaml $OLD_SETTING \
       pretrain.per_device_train_batch_size=16 pretrain.max_steps=$steps \
       pretrain.output_dir=out-$steps pretrain.resume_dir=resume-$steps > bench-$steps.log 2>&1 )
  grep -h '"train_samples_per_second"' "$STORE/old/resume-$steps/log.jsonl" | tail -1 \
    > results/bench/seed-style-b16-$steps.json
  echo "seed-style b16, $steps steps: $(cat results/bench/seed-style-b16-$steps.json)"
  [ -n "${OUT:-}" ] && cp results/bench/seed-style-b16-$steps.json "$STORE/old/bench-$steps.log" "$OUT/" 2>/dev/null
done
cp "$STORE"/old/bench-*.log results/bench/ 2>/dev/null
fi

# 2-6. ours: the same setting at micro-batch 16 and 64, with and without compiled layers,
# then the recipe of configs/smollm2-icae.yaml (120-token spans) without and with them.
# Steady examples/s: between the log row at ~40% of the run and the last one (compilation
# and warm-up excluded); whole-run examples/s as the Trainer counts it, for the seed-style
# comparison (its code logs no wall clock).
# DEADLINE (epoch seconds, from remote.sh): a run that could not finish before it is
# skipped, so that the call returns with what was measured.
DEADLINE=${DEADLINE:-$(( $(date +%s) + 3600 ))}
run() {
  local name=$1; shift
  # SPEED_RUNS="a b ...": only these of the runs below, in this script's order.
  [ -n "${SPEED_RUNS:-}" ] && [[ " $SPEED_RUNS " != *" $name "* ]] && return
  if [ $(( $(date +%s) + SECS + 75 )) -gt "$DEADLINE" ]; then echo "skipped $name: no time left"; return; fi
  timeout $((SECS + 180)) python3 -m icae pretrain --config configs/smollm2-icae.yaml $COMMON "$@" \
    pretrain.output_dir=results/bench/$name pretrain.resume_dir=results/bench/$name.resume \
    > results/bench/$name.log 2>&1
  python3 - "$name" <<'PY'
import csv, json, sys
name = sys.argv[1]
meta = json.load(open(f"results/bench/{name}/checkpoint.json"))
rows = [r for r in csv.DictReader(open(f"results/bench/{name}.resume/log.csv"))
        if r.get("wall_seconds")]
keep = {k: meta.get(k) for k in ("global_step", "examples_seen", "train_runtime_s",
        "train_samples_per_second", "peak_gpu_memory_gib", "gpu")}
if len(rows) >= 3:
    a, b = rows[int(0.4 * (len(rows) - 1))], rows[-1]
    keep["steady_examples_per_s"] = ((int(b["examples_seen"]) - int(a["examples_seen"]))
                                     / (float(b["wall_seconds"]) - float(a["wall_seconds"])))
    keep["steady_window"] = [int(a["step"]), int(b["step"])]
json.dump(keep, open(f"results/bench/{name}.json", "w"))
print(name, keep)
PY
  [ -n "${OUT:-}" ] && cp results/bench/$name.json results/bench/$name.log "$OUT/" 2>/dev/null
}
RECIPE="pretrain.max_steps=100000 pretrain.eval_steps=null pretrain.save_steps=100000
  pretrain.logging_steps=5 pretrain.max_train_seconds=$SECS data.prepared_dir=$STORE/prepared-s128"
# Most telling first (the deadline may cut the list).
# 2026-12-07, second lease: the LM head's loss with gradients made in the forward pass
# (icae.models.linear_ce, always on for a frozen head), cuDNN's attention for the mask-free
# causal passes (pretrain.cudnn_attention, default true since), spans grouped by length over
# 4 steps. ours-b64-c-flash is that lease's "ours-b64-compiled" (measured while
# cudnn_attention still defaulted to false).
run ours-b64-c-all $SEED_SETTING pretrain.per_device_train_batch_size=64 pretrain.compile_layers=true \
  pretrain.cudnn_attention=true pretrain.length_grouping_steps=4
run ours-b64-c-cudnn $SEED_SETTING pretrain.per_device_train_batch_size=64 pretrain.compile_layers=true \
  pretrain.cudnn_attention=true
run ours-b64-c-flash $SEED_SETTING pretrain.per_device_train_batch_size=64 pretrain.compile_layers=true \
  pretrain.cudnn_attention=false
run ours-b128-c-all $SEED_SETTING pretrain.per_device_train_batch_size=128 \
  pretrain.gradient_accumulation_steps=1 pretrain.compile_layers=true pretrain.cudnn_attention=true \
  pretrain.length_grouping_steps=4
run ours-b64 $SEED_SETTING pretrain.per_device_train_batch_size=64 pretrain.compile_layers=false
run ours-b64-compiled $SEED_SETTING pretrain.per_device_train_batch_size=64 pretrain.compile_layers=true
# One micro-batch of 128 instead of 64 x 2; and 64 x 2 with the LM head + loss in one chunk
# (~32k labelled tokens: no recomputation of the head in the backward pass, ~16 GB more).
run ours-b128-compiled $SEED_SETTING pretrain.per_device_train_batch_size=128 \
  pretrain.gradient_accumulation_steps=1 pretrain.compile_layers=true
run ours-b64-compiled-onechunk $SEED_SETTING pretrain.per_device_train_batch_size=64 \
  pretrain.compile_layers=true pretrain.loss_chunk_tokens=65536
run recipe-b128-compiled $RECIPE pretrain.per_device_train_batch_size=128 \
  pretrain.gradient_accumulation_steps=1 pretrain.compile_layers=true
run recipe-b128 $RECIPE pretrain.per_device_train_batch_size=128 pretrain.gradient_accumulation_steps=1 \
  pretrain.compile_layers=false
run ours-b16 $SEED_SETTING pretrain.per_device_train_batch_size=16 pretrain.compile_layers=false
