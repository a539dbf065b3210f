#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `RUNSET=2026-12-02-squad START=0 remote.sh setup`
# (`SWEEP_SCRIPT=ft_memory.sh remote.sh sweep` starts it in the background; `remote.sh
# wait S` follows it). The fourth lease of 2026-12-02 found that ICAE-FT fits its training
# questions (95 F1) but answers new paragraphs with words they do not contain, while the
# pre-trained memory reconstructs those paragraphs at 0.96 BLEU-1. Does keeping that
# memory generalise better, either frozen (finetune.freeze_encoder: encoder adapter and
# memory slots frozen; the decoder adapter and the markers learn to read them) or kept
# reconstructing the text (finetune.ae_ratio: autoencoding examples of half the
# paragraphs in the mix)? Side by side, from the shipped checkpoint, dev F1 on the first
# SQUAD_N questions and train-set F1 on the first TRAIN_N training questions:
#   icae-frozen-lr1e-3      2 epochs at the rate of the unfrozen runs (45.3 / 44.6 F1)
#   icae-frozen-lr3e-3      2 epochs at 3x the rate (fewer trained parameters)
#   icae-ae50-lr1e-3        not frozen, ae_ratio 0.5, 2 epochs
#   icae-frozen-ae50-lr1e-3 frozen and ae_ratio 0.5: the decoder adapter also keeps
#                           reading the whole text out of the slots
#   icae-frozen-lr1e-3-e4   (E4=1 only: it takes twice as long) 4 epochs (unfrozen: 46.1
#                           dev, 95.3 train-set F1)
# Usage: ft_memory.sh STORE [overrides shared by every command...]
source benchmarks/gpu/sweep_common.sh "$@"
FROZEN="finetune.init_checkpoint=$SHIPPED finetune.freeze_encoder=true"
prepare_squadtrain
FROZEN_RUNS=("icae-frozen-lr1e-3|$(lr 1e-3)" "icae-frozen-lr3e-3|$(lr 3e-3)"
             "icae-frozen-ae50-lr1e-3|$(lr 1e-3) finetune.ae_ratio=0.5")
[ "${E4:-0}" = 1 ] && FROZEN_RUNS+=("icae-frozen-lr1e-3-e4|$(lr 1e-3) finetune.num_train_epochs=4")
for spec in "${FROZEN_RUNS[@]}"; do
  IFS='|' read -r name over <<< "$spec"
  (ft_eval $name $FROZEN $over && on_train $name results/ft/$name) &
done
for spec in "icae-ae50-lr1e-3|$(lr 1e-3) finetune.ae_ratio=0.5"; do
  IFS='|' read -r name over <<< "$spec"
  (ft_eval $name finetune.init_checkpoint=$SHIPPED $over && on_train $name results/ft/$name) &
done
wait
say "sweep done"
