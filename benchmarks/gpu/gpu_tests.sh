#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), carrying .gpu/t (pytest, pluggy, iniconfig,
# packaging, nltk and defusedxml wheels: `pip download --no-deps` them there): the tests
# that skip without CUDA (CUDA-graph decoding, the compiled fused LM-head loss under bf16
# autocast, cuDNN's causal backward), with the rest of their files. ~1 minute.
#   bash benchmarks/gpu/gpu_tests.sh
set -uo pipefail
SITE=/tmp/icae-gpu-tests
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/t/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH="$SITE" python3 -m pytest -q -rs -p no:cacheprovider \
  tests/test_linear_ce.py tests/test_decoding.py 2>&1 | tail -25
