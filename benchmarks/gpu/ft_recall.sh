#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `RUNSET=2026-12-02-squad START=0 EXTRA_PROFILES=s2x128
# remote.sh setup` (`SWEEP_SCRIPT=ft_recall.sh RUNSET=2026-12-02-squad remote.sh sweep 60`
# starts it in the background; `remote.sh wait 540`, repeated, follows it until
# results/sweep.log says `sweep done`). SQuAD from the checkpoint shipped since 2026-12-07
# (held-out AE BLEU-1 0.9945; every earlier SQuAD row started from the 0.975 one), and a
# test of why ICAE-FT generalises badly: its wrong dev answers are mostly words the
# paragraph does not contain, although the memory reconstructs the paragraph (0.987
# BLEU-1). Autoencoding only teaches the decoder to read the memory from its first slot
# on; extractive QA needs it to find a place in the memory by its content. The recall
# objective (data.pretrain.recall_ratio) teaches that on unlimited pre-training text.
# Side by side on the one GPU:
#   icae-e2            ICAE-FT, lr 1e-3, 2 epochs, from the shipped checkpoint (the
#                      2026-12-02 rows from the old one: 45.3 / 44.6 dev F1)
#   llm                LLM-FT, lr 1e-3, 2 epochs (75.0 on an H200), and its same-budget
#                      truncation baseline: both sides from the same card
#   icae-pretrained    the shipped checkpoint, pre-trained only
#   recall -> icae-recall-e2
#                      RECALL_STEPS steps of 128 from the shipped checkpoint on 150-250-token
#                      spans (one or two segments, as SQuAD's paragraphs), AE/LM/recall
#                      25/25/50, cosine decay; its held-out AE; then ICAE-FT as icae-e2
# Usage: ft_recall.sh STORE [overrides for every command...]
source benchmarks/gpu/sweep_common.sh "$@"
RECALL_STEPS=${RECALL_STEPS:-400}
RECALL_SECONDS=${RECALL_SECONDS:-330}
# Held-out test documents at the shipped span length (finish.sh's preparation).
prepare_test() {
  python3 -m icae prepare-data --config $CFG $COMMON $(profile s128) \
    data.prepared_dir=$STORE/prepared-test-s128 data.build=[pretrain] \
    "data.pretrain.sources=[{path: $STORE/data/test.jsonl.gz}]" \
    "data.pretrain.eval_sources=[{path: $STORE/data/test.jsonl.gz}]" data.pretrain.eval_size=64 \
    > results/prepare-test-s128.log 2>&1 || say "FAILED prepare-test-s128"
}
recall_chain() {
  say "pretrain recall starts"
  python3 -m icae pretrain --config $CFG $COMMON $(profile s2x128) \
    data.prepared_dir=$STORE/prepared-s2x128 pretrain.init_checkpoint=$SHIPPED seed=47 \
    data.pretrain.ae_only_examples=0 data.pretrain.lm_ratio_ramp_examples=0 \
    data.pretrain.lm_ratio=0.25 data.pretrain.recall_ratio=0.5 \
    pretrain.max_steps=$RECALL_STEPS pretrain.lr_scheduler_type=cosine pretrain.warmup_steps=20 \
    pretrain.eval_steps=100 pretrain.max_train_seconds=$RECALL_SECONDS \
    pretrain.output_dir=results/recall/pretrain pretrain.resume_dir=results/recall/resume \
    > results/recall-pretrain.log 2>&1 || { say "FAILED pretrain recall"; tail -5 results/recall-pretrain.log; return 1; }
  say "pretrain recall ended: $(tail -1 results/recall/pretrain/log.csv 2>/dev/null)"
  ev ae-test-recall evaluation.task=ae evaluation.checkpoint=results/recall/pretrain \
    $(profile s128) data.prepared_dir=$STORE/prepared-test-s128 evaluation.batch_size=64 &
  ft_eval icae-recall-e2 finetune.init_checkpoint=results/recall/pretrain $(lr 1e-3)
  wait
}

prepare_test
ft_eval icae-e2 finetune.init_checkpoint=$SHIPPED $(lr 1e-3) &
(ft_eval llm $LLM $(lr 1e-3) \
  && ev qa-truncate-llm $S128 $LLM evaluation.task=qa evaluation.num_samples=$SQUAD_N \
       evaluation.baseline=truncate evaluation.checkpoint=results/ft/llm) &
ev qa-icae-pretrained $S128 evaluation.task=qa evaluation.num_samples=$SQUAD_N \
  evaluation.checkpoint=$SHIPPED &
recall_chain &
wait
say "sweep done"
