#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), from the repository root, one stage per call:
#
#   store-a   carry .gpu/a, then store-b carrying .gpu/b: keep their GGUF parts, data and
#   store-b   wheels in $STORE (outside the checkout); CHECK=1 also runs the fused-loss and
#             SDPA-backend checks (torch only); store-NAME copies any carried .gpu/NAME
#             into $STORE (e.g. store-x: a run's parameters to continue from)
#   setup     carry .gpu/c: join + verify the GGUF, install the wheels, prepare the model
#             and data (the runs' profiles and EXTRA_PROFILES), with SPEED=1 time the
#             training steps (seed-style code vs ours), then (unless START=0) start the
#             pre-training runs in the background (setsid: they outlive this call while
#             the machine stays warm)
#   wait S    follow the runs for S seconds, then bring back logs (and, with
#             BRING_RESUME=1, each run's resume state in <=15 MiB pieces)
#   finish    wait for the runs, evaluate AE on held-out test documents, fine-tune and
#             evaluate SQuAD, bring back checkpoints, logs and metrics
#   resume    (a fresh machine) unpack resume state brought back earlier (carry .gpu/resume)
#             and restart the runs where they stopped
#   speed     time the training steps (as SPEED=1 setup does) on a machine set up earlier
#   speed-random  carry .gpu/s, any machine state, one call: random weights of SmolLM2-135M's
#             shape (no GGUF), its data prepared there, then speed.sh (with DIAG=1 first the
#             training loop's synchronisations and GPU idle share); a second call on the
#             same warm machine skips the preparation (SEED_STEPS=none skips the seed-style
#             runs)
#   profile   profile_step.sh on a machine set up earlier (its prepared model's shape)
#   sweep     after `START=0 EXTRA_PROFILES=s2x128 setup`: start ft_sweep.sh (SQuAD
#             fine-tuning to the end of its schedule, learning rates, two-segment
#             pre-training; SWEEP_SCRIPT=ft_longer.sh: longer schedules, seeds, LLM-FT at the
#             same rate, the compiled-layer check) in the background; follow it with `wait S`
#
# Calls must follow each other within the machine's 30 s warm window (or a fresh
# machine starts bare: then use `resume`). Everything a run needs survives in $STORE and
# results/; see benchmarks/gpu/README.md.
set -uo pipefail
STAGE=${1:?stage}
STORE=${STORE:-/tmp/icae-gpu}
CFG=configs/smollm2-icae.yaml
RUN_SECONDS=${RUN_SECONDS:-600}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
[ -d "$STORE/site" ] && export PYTHONPATH="$STORE/site"
PY=python3
mkdir -p "$STORE" results
OUT=${OUT:-$STORE/out}
mkdir -p "$OUT"

source benchmarks/gpu/runs.sh

common() {  # overrides shared by every command on the GPU machine
  echo "model.model_dir=$STORE/model"
}

link_shared() {  # the config's ../shared paths -> the carried data
  mkdir -p ../shared/data/pretrain ../shared/data/squad
  for f in corpus eval test; do ln -sf "$STORE/data/$f.jsonl.gz" ../shared/data/pretrain/; done
  for f in dev-v1.1 train-subset-v1.1; do ln -sf "$STORE/data/$f.json.gz" ../shared/data/squad/; done
}

install_wheels() {  # what the image lacks, carried as wheels (store-b, .gpu/s)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$STORE/site" "$STORE"/whl/*.whl
  export PYTHONPATH="$STORE/site"
}

start_runs() {
  for name in $(run_names); do
    mkdir -p "results/$name"
    setsid nohup $PY -m icae pretrain --config $CFG $(common) $(run_args $name) \
      pretrain.output_dir="results/$name/pretrain" pretrain.resume_dir="results/$name/resume" \
      pretrain.max_train_seconds=$RUN_SECONDS >> "results/$name/pretrain.log" 2>&1 &
    echo "started $name (pid $!)"
  done
}

stop_run() {  # SIGTERM to the run's main process only (data-loader workers share its
  # command line, and a worker killed under it would crash the run before it saves)
  local pid
  # Anchored: a shell whose command line merely mentions the run must not match.
  pid=$(pgrep -o -f "^$PY -m icae pretrain .*output_dir=results/$1/pretrain") && kill -TERM "$pid" \
    && echo "stopping $1 (pid $pid): it saves and ends"
}

progress() {
  for name in $(run_names); do
    echo "== $name: $(grep -c '^\[step' results/$name/pretrain.log 2>/dev/null) log lines"
    grep '^\[step\|eval_ae_bleu1\|WARNING\|Error\|error' "results/$name/pretrain.log" 2>/dev/null | tail -4 | cut -c1-300
  done
  [ -f results/sweep.log ] && { echo "== sweep"; tail -n 12 results/sweep.log | cut -c1-400; }
  for f in results/*-pretrain.log; do  # a sweep's own pre-training (ft_recall.sh)
    [ -f "$f" ] && { echo "== $f"; grep '^\[step\|eval_ae_bleu1' "$f" | tail -2 | cut -c1-400; }
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

speed() {  # needs the s448 data (EXTRA_PROFILES=s448 at setup) and the GPU to itself
  bash benchmarks/gpu/speed.sh "$STORE" $(common) data.prepared_dir=$STORE/prepared-s448 \
    2>&1 | tee results/bench.log | tail -40
}

bring_logs() {
  tar czf "$OUT/logs.tgz" results/*.log results/*/pretrain.log results/*/resume/log.csv \
    results/*/*/log.csv results/*/*/checkpoint.json results/*/*/*.json results/*/*.log \
    results/*/*/*/metrics*.csv results/*/*/*/summary.json results/eval results/bench/*.log results/bench/*.json results/bench/*/checkpoint.json 2>/dev/null
  ls -la "$OUT"
}

case "$STAGE" in
store-*)
  cp -r ".gpu/${STAGE#store-}/." "$STORE/" && ls -la "$STORE" "$STORE/data"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # CHECK=1 (torch only, ~1 min): the fused LM-head loss against the plain one, and SDPA's
  # flash vs cuDNN attention for the training passes' shapes (benchmarks/gpu/*.py).
  if [ "${CHECK:-0}" = 1 ]; then
    timeout 90 $PY benchmarks/gpu/check_fused_loss.py 2>&1 | tail -4 | tee "$OUT/check_fused_loss.txt"
    timeout 120 $PY benchmarks/gpu/sdpa_backends.py --out "$OUT/sdpa_backends.json" 2>&1 | tail -30 | cut -c1-300
  fi
  ;;
setup)
  export DEADLINE=$(( $(date +%s) + ${CALL_SECONDS:-570} ))
  set -e
  cp -r .gpu/c/. "$STORE/"
  cat "$STORE"/gguf.part[0-9] > "$STORE/smollm2.gguf"
  echo "$(cat "$STORE/gguf.sha256")  $STORE/smollm2.gguf" | sha256sum -c -
  install_wheels
  link_shared
  $PY -m icae prepare-model --config $CFG $(common) model.base_model="$STORE/smollm2.gguf"
  for prof in $( (profiles; for p in ${EXTRA_PROFILES:-}; do echo $p; done) | sort -u); do
    $PY -m icae prepare-data --config $CFG $(common) $(profile $prof) \
      data.prepared_dir=$STORE/prepared-$prof > results/prepare-$prof.log 2>&1 &
  done
  time wait
  tail -n 3 results/prepare-*.log
  set +e
  [ "${SPEED:-0}" = 1 ] && speed
  if [ "${START:-1}" = 1 ]; then start_runs; sleep 45; progress; fi
  bring_logs
  ;;
wait)
  sleep "${2:-500}"; progress
  if [ "${BRING_RESUME:-0}" = 1 ]; then
    tar cf - results/*/resume | split -b 15728640 -d -a 1 - "$OUT/resume.tar.part"
  fi
  bring_logs
  ;;
start)  # (re)start the runs on a prepared machine
  link_shared
  start_runs
  sleep 45; progress
  bring_logs
  ;;
keep)  # keep only the named runs: the others get SIGTERM (they save and stop)
  shift
  for name in $(run_names); do
    case " $* " in *" $name "*) continue ;; esac
    stop_run $name
  done
  sleep "${WAIT:-20}"; progress
  bring_logs
  ;;
speed)  # on a machine set up earlier (with EXTRA_PROFILES=s448), once nothing else runs
  export DEADLINE=$(( $(date +%s) + ${CALL_SECONDS:-570} ))
  speed
  bring_logs
  ;;
speed-random)
  export DEADLINE=$(( $(date +%s) + ${CALL_SECONDS:-570} ))
  if [ ! -f "$STORE/random-ready" ]; then
    set -e
    cp -r .gpu/s/. "$STORE/"
    install_wheels
    link_shared
    $PY benchmarks/gpu/random_model.py "$STORE/smollm2" "$STORE/model"
    for prof in s448 s128; do  # the issue's setting; the recipe's
      $PY -m icae prepare-data --config $CFG $(common) $(profile $prof) data.build=[pretrain] \
        data.pretrain.token_num=4000000 data.prepared_dir=$STORE/prepared-$prof \
        > results/prepare-$prof.log 2>&1 &
    done
    wait
    set +e
    touch "$STORE/random-ready"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  mkdir -p results/bench
  # SDPA=1: flash vs cuDNN attention for the training passes' shapes (time, gradients).
  [ "${SDPA:-0}" = 1 ] && timeout 120 $PY benchmarks/gpu/sdpa_backends.py \
    --out results/bench/sdpa_backends.json > results/bench/sdpa_backends.log 2>&1
  OUT= bash benchmarks/gpu/speed.sh "$STORE" $(common) data.prepared_dir=$STORE/prepared-s448 \
    2>&1 | tee results/bench.log | tail -40
  tar czf "$OUT/speed.tgz" results/bench.log results/bench/*.json results/bench/*.log \
    results/diag/*.txt results/diag/*.json results/diag/diag.log 2>/dev/null
  cp results/diag/syncs.txt results/diag/profile.txt "$OUT/" 2>/dev/null
  ls -la "$OUT"
  ;;
profile)  # on a machine set up earlier, once nothing else runs
  MODEL_DIR=$STORE/model OUT=$OUT/profile bash benchmarks/gpu/profile_step.sh
  ;;
sweep)
  link_shared
  setsid nohup bash "benchmarks/gpu/${SWEEP_SCRIPT:-ft_sweep.sh}" "$STORE" $(common) > results/sweep.log 2>&1 &
  sleep "${2:-60}"; progress
  bring_logs
  ;;
resume)
  link_shared
  cat .gpu/resume/resume.tar.part* | tar xf -
  start_runs
  sleep 30; progress
  ;;
finish)
  [ "${STOP_RUNS:-1}" = 1 ] && for name in $(run_names); do stop_run $name; done
  while pgrep -f "^$PY -m icae pretrain " > /dev/null; do sleep 5; done
  progress
  BEST=${BEST:?BEST=<run name> picks the run that is fine-tuned on SQuAD}
  export STORE BEST RUNSET
  export PRETRAINED=${PRETRAINED:-results/$BEST/pretrain}
  bash benchmarks/gpu/finish.sh "$STORE" $(common) 2>&1 | tee results/finish.log | tail -60
  bring_logs
  # The chosen run's trained parameters in bf16 (what is shipped), in <=15 MiB pieces.
  [ -f "results/$BEST/pretrain/checkpoint.json" ] \
    && $PY benchmarks/gpu/pack_checkpoint.py results/$BEST/pretrain "$STORE/ship-$BEST" \
    && tar cf - -C "$STORE" "ship-$BEST" | split -b 15728640 -d -a 1 - "$OUT/ship.tar.part"
  ls -la "$OUT"
  ;;
*) echo "unknown stage $STAGE"; exit 2 ;;
esac
