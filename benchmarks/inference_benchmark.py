"""Inference benchmark on a GPU with randomly initialised models of real shapes.

The same code as ``python -m icae benchmark-inference`` (icae/evaluation/inference_benchmark.py,
whose docstring describes the scenarios), with the paper's ICAE settings as defaults
(mem_size 256, mean_compression_rate 4, EPL, LoRA r 128 on q/v). One call for the issue's
goals on one H200 (a few minutes at Qwen3-1.7B):

    python benchmarks/inference_benchmark.py --shape qwen3-1.7b --preset goals \
        --time-budget 200 --out benchmarks/results/DATE-h200/inference-qwen3-1.7b.json

Trailing ``key=value`` arguments override the experiment config (e.g. ``model.mem_size=128``).
CPU smoke run: ``--shape tiny --contexts 64 --batches 1 --new-tokens 4 model.mem_size=8``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's icae

PAPER = ["model.mem_size=256", "model.mean_compression_rate=4", "model.position_layout=epl",
         "model.lora_r=128", "model.lora_alpha=32"]


def main(argv=None) -> int:
    from icae.config import load_config
    from icae.evaluation import inference_benchmark as bench

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ap.add_argument("--log-level", default="INFO")
    bench.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, (PAPER if args.config is None else []) + args.overrides)
    bench.run(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
