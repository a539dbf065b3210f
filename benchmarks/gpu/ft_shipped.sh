#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `RUNSET=2026-12-02-squad START=0 remote.sh setup`
# (`SWEEP_SCRIPT=ft_shipped.sh RUNSET=2026-12-02-squad remote.sh sweep 60` starts it in the
# background; `remote.sh wait 540`, repeated, follows it until results/sweep.log says
# `sweep done`): SQuAD from the checkpoint shipped since 2026-12-07 (held-out AE BLEU-1
# 0.9945, SQuAD's paragraphs 0.987; every earlier SQuAD row started from the 0.975 one),
# side by side on the one GPU:
#   icae-e2, icae-e4   ICAE-FT at lr 1e-3 for 2 and 4 epochs (the 2026-12-02 rows: 45.3
#                      and 46.1 dev F1)
#   llm                LLM-FT at lr 1e-3, 2 epochs (75.0 on an H200), with its same-budget
#                      truncation baseline, so that both sides come from the same card
#   icae-pretrained    the pre-trained-only ICAE
# Dev F1 on the first SQUAD_N dev questions; train-set F1 (first TRAIN_N training
# questions) of the 4-epoch ICAE. Usage: ft_shipped.sh STORE [overrides for every command...]
source benchmarks/gpu/sweep_common.sh "$@"
prepare_squadtrain

ft_eval icae-e2 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) &
(ft_eval icae-e4 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) finetune.num_train_epochs=4 \
  && on_train icae-e4 results/ft/icae-e4) &
(ft_eval llm $LLM $(lr 1e-3) \
  && ev qa-truncate-llm $S128 $LLM evaluation.task=qa evaluation.num_samples=$SQUAD_N \
       evaluation.baseline=truncate evaluation.checkpoint=results/ft/llm) &
ev qa-icae-pretrained $S128 evaluation.task=qa evaluation.num_samples=$SQUAD_N \
  evaluation.checkpoint=$SHIPPED &
wait
say "sweep done"
