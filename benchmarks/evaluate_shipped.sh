#!/usr/bin/env bash
# Evaluate the shipped checkpoint (checkpoints/smollm2-135m-icae) on this machine (CPU is
# fine): autoencoding on the held-out TEST documents (never trained or tuned on) at the
# training span length and on SQuAD's dev paragraphs (Wikipedia), and SQuAD v1.1 dev for the untrained base (full context) and the
# pre-trained-only ICAE. Needs the development data in ../shared (README: data) and a
# prepared base model (python -m icae prepare-model --config configs/smollm2-icae.yaml).
# Usage: [SKIP_AE=1] benchmarks/evaluate_shipped.sh [SQUAD_N]   (outputs: results/shipped/)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}
PY=${PY:-python}
CFG=configs/smollm2-icae.yaml
CKPT=checkpoints/smollm2-135m-icae
OUTDIR=results/shipped
TEST=data/prepared/smollm2-test-s128
X="model.dtype=float32 data.progress=false evaluation.progress=false"
mkdir -p $OUTDIR
$PY -m icae prepare-data --config $CFG $X data.prepared_dir=$TEST data.build=[pretrain] \
  "data.pretrain.sources=[{path: ../shared/data/pretrain/test.jsonl.gz}]" \
  "data.pretrain.eval_sources=[{path: ../shared/data/pretrain/test.jsonl.gz}]" \
  data.pretrain.eval_size=64
[ "${SKIP_AE:-0}" = 1 ] || $PY -m icae evaluate --config $CFG $X data.prepared_dir=$TEST \
  evaluation.task=ae evaluation.checkpoint=$CKPT evaluation.batch_size=16 \
  evaluation.output_dir=$OUTDIR/ae-test
# The same on Wikipedia text: 120-token spans of the SQuAD dev paragraphs (one per article).
if [ "${SKIP_AE:-0}" != 1 ]; then
  SQUAD_DOCS=data/prepared/squad-dev-paragraphs.jsonl.gz
  $PY benchmarks/squad_paragraphs.py ../shared/data/squad/dev-v1.1.json.gz $SQUAD_DOCS
  $PY -m icae prepare-data --config $CFG $X data.prepared_dir=data/prepared/smollm2-squaddev-s128 \
    data.build=[pretrain] "data.pretrain.sources=[{path: $SQUAD_DOCS}]" \
    "data.pretrain.eval_sources=[{path: $SQUAD_DOCS}]" data.pretrain.eval_size=64
  $PY -m icae evaluate --config $CFG $X data.prepared_dir=data/prepared/smollm2-squaddev-s128 \
    evaluation.task=ae evaluation.checkpoint=$CKPT evaluation.batch_size=16 \
    evaluation.output_dir=$OUTDIR/ae-squaddev
fi
$PY -m icae prepare-data --config $CFG $X data.build=[squad]
Q="evaluation.task=qa evaluation.num_samples=$N evaluation.batch_size=16"
$PY -m icae evaluate --config $CFG $X $Q evaluation.checkpoint=$CKPT \
  evaluation.output_dir=$OUTDIR/qa-icae-pretrained
$PY -m icae evaluate --config $CFG $X $Q model.model_type=llm model.train_decoder=false \
  evaluation.output_dir=$OUTDIR/qa-base
for d in $OUTDIR/*/; do echo "== $d"; cat $d/summary.json | head -c 700; echo; done
