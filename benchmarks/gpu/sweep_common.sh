# Sourced by finish.sh and the fine-tuning sweeps (ft_sweep.sh, ft_longer.sh, ft_memory.sh) as
# `source benchmarks/gpu/sweep_common.sh "$@"` with their arguments STORE [overrides shared
# by every command...]: the settings they share and runs.sh's helpers. A sweep may set
# FT_SECONDS before (its own default); SQUAD_N, TRAIN_N and FT_SECONDS come from the
# environment when given.
set -uo pipefail
STORE=$1; shift
COMMON="$*"
CFG=configs/smollm2-icae.yaml
SQUAD_N=${SQUAD_N:-2000}
TRAIN_N=${TRAIN_N:-1000}
FT_SECONDS=${FT_SECONDS:-1200}
SHIPPED=checkpoints/smollm2-135m-icae
source benchmarks/gpu/runs.sh
S128="$(profile s128) data.prepared_dir=$STORE/prepared-s128"
LLM="model.model_type=llm model.train_decoder=false"
mkdir -p results/eval results/ft
