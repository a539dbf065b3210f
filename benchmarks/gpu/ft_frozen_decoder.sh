#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `RUNSET=2026-12-02-squad START=0 remote.sh setup`
# (`SWEEP_SCRIPT=ft_frozen_decoder.sh RUNSET=2026-12-02-squad remote.sh sweep 60` starts it
# in the background; `remote.sh wait 540`, repeated, follows it until results/sweep.log says
# `sweep done`). Prepared on 2026-12-07 after the fourth lease, not run yet.
#
# ICAE-FT fits its training questions (95 F1 at 4 epochs) and answers new paragraphs at 47
# F1 against LLM-FT's 75, with the same deficit wherever the answer sits. Every run so far
# trained the decoder adapter in fine-tuning, which can learn to answer the training
# questions without reading the memory well. The ICAE paper fine-tunes only the encoder
# (its decoder is frozen): finetune.freeze_decoder keeps the pre-trained decoder adapter and
# trains the encoder adapter, the memory slots and the markers, so the memory must come to
# say the answer in a form the decoder already reads. Side by side, from the shipped
# checkpoint, dev F1 on the first SQUAD_N questions and train-set F1 on TRAIN_N training
# questions:
#   icae-fd-lr1e-3     decoder frozen, lr 1e-3, 2 epochs (unfrozen: 47.4 dev F1, H100)
#   icae-fd-lr3e-3     decoder frozen, lr 3e-3 (fewer parameters train)
#   icae-e4            unfrozen, 4 epochs (from the old checkpoint: 46.1 dev, 95.3 train)
# Usage: ft_frozen_decoder.sh STORE [overrides for every command...]
source benchmarks/gpu/sweep_common.sh "$@"
prepare_squadtrain
FD="finetune.init_checkpoint=$SHIPPED finetune.freeze_decoder=true"
for spec in "icae-fd-lr1e-3|$(lr 1e-3)" "icae-fd-lr3e-3|$(lr 3e-3)"; do
  IFS='|' read -r name over <<< "$spec"
  (ft_eval $name $FD $over && on_train $name results/ft/$name) &
done
(ft_eval icae-e4 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) finetune.num_train_epochs=4 \
  && on_train icae-e4 results/ft/icae-e4) &
wait
say "sweep done"
