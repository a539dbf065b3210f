#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `START=0 remote.sh setup` (`SWEEP_SCRIPT=ft_longer.sh remote.sh
# sweep` starts it in the background; `remote.sh wait S` follows it): what limits ICAE-FT
# on SQuAD after the third lease of 2026-12-02 (45.3 F1 at lr 1e-3 against LLM-FT's 71.5
# at lr 2e-4). Side by side on the one GPU, each from the shipped checkpoint:
#   icae-lr1e-3-e4    4 epochs instead of 2 (does ICAE-FT only learn more slowly?)
#   icae-lr2e-3       2 epochs at twice the rate
#   icae-lr1e-3-s43   the 2-epoch lr 1e-3 run again with another seed (run-to-run spread)
#   llm-lr1e-3        LLM-FT at the rate ICAE-FT uses (the baseline tuned the same way),
#                     with its same-budget truncation baseline
#   llm-lr2e-4        LLM-FT at lease 2's rate, this time to the end of its schedule
#   compile-check     compiled-layer pre-training with periodic AE decoding every 20
#                     steps, TORCH_LOGS=recompiles (does the decoding still recompile?)
# Dev F1 of every model on the first SQUAD_N dev questions; train-set F1 (first TRAIN_N
# questions of the training subset) of the 4-epoch ICAE and of LLM-FT, to tell fitting
# from generalising. Usage: ft_longer.sh STORE [overrides shared by every command...]
source benchmarks/gpu/sweep_common.sh "$@"
mkdir -p results/compile-check
prepare_squadtrain

(ft_eval icae-lr1e-3-e4 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) finetune.num_train_epochs=4 \
  && on_train icae-lr1e-3-e4 results/ft/icae-lr1e-3-e4) &
ft_eval icae-lr2e-3 finetune.init_checkpoint=$SHIPPED $(lr 2e-3) &
ft_eval icae-lr1e-3-s43 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) seed=43 &
(ft_eval llm-lr1e-3 $LLM $(lr 1e-3) \
  && ev qa-truncate-llm-lr1e-3 $S128 $LLM evaluation.task=qa evaluation.num_samples=$SQUAD_N \
       evaluation.baseline=truncate evaluation.checkpoint=results/ft/llm-lr1e-3 \
  && on_train llm-lr1e-3 results/ft/llm-lr1e-3 $LLM) &
ft_eval llm-lr2e-4 $LLM $(lr 2e-4) &
(
  say "compile-check starts"
  TORCH_LOGS=recompiles python3 -m icae pretrain --config $CFG $COMMON $S128 \
    pretrain.init_checkpoint=$SHIPPED pretrain.compile_layers=true \
    data.pretrain.ae_only_examples=0 data.pretrain.lm_ratio_ramp_examples=0 \
    pretrain.max_steps=100000 pretrain.eval_steps=20 pretrain.save_steps=100000 \
    pretrain.max_train_seconds=${CHECK_SECONDS:-150} \
    pretrain.output_dir=results/compile-check/pretrain \
    pretrain.resume_dir=results/compile-check/resume > results/compile-check/pretrain.log 2>&1 \
    || say "FAILED compile-check"
  say "compile-check ended: $(grep -c 'Recompiling' results/compile-check/pretrain.log) recompile" \
    "messages, $(python3 -c "import csv; print(sum(1 for r in csv.DictReader(open('results/compile-check/resume/log.csv')) if r.get('eval_ae_bleu1')))") AE BLEU rows," \
    "$(grep -c 'recompile_limit\|cache_size_limit' results/compile-check/pretrain.log) limit hits"
) &
wait
say "sweep done"
