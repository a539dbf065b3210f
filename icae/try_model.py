"""``python -m icae try``: compress your own text with a checkpoint and see what the
memory holds.

    python -m icae try --checkpoint results/quickstart/m16-r4-epl-s42/pretrain/final \\
        --input notes.txt
    cat notes.txt | python -m icae try --checkpoint CKPT --question "Who wrote it?"

The text (a file, or stdin with ``--input -`` / no ``--input``) is tokenised and
compressed by the checkpoint's encoder into memory slots. The frozen decoder then sees
the memory only, never the text: without ``--question`` it reconstructs the text (the
pre-training autoencoding prompt ``memory [AE]``), with ``--question`` it answers it (the
fine-tuning prompt of SQuAD, ``data.squad.prompt``). The generated text goes to stdout;
the token counts, the compression rate (text tokens / memory slots) and the timings go to
stderr (``--json FILE`` writes them as JSON too).

The config is the checkpoint's own ``config.yaml`` (so memory size, rate, layout and the
base model match what it was trained with) unless ``--config`` is given; ``key=value``
overrides apply on top (e.g. ``model.model_dir=...`` when the base model moved).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def config_path(args) -> str | None:
    """``--config``, else the checkpoint's ``config.yaml`` when it has one."""
    if getattr(args, "config", None):
        return args.config
    ckpt = getattr(args, "checkpoint", None)
    if ckpt and (Path(ckpt) / "config.yaml").is_file():
        return str(Path(ckpt) / "config.yaml")
    return None


def read_text(source: str | None) -> tuple[str, str]:
    if source in (None, "-"):
        if sys.stdin.isatty():
            print("reading the text from stdin (end with Ctrl-D)", file=sys.stderr)
        return sys.stdin.read(), "stdin"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"--input {source}: no such file")
    return path.read_text(encoding="utf-8"), str(path)


def try_text(model, text: str, question: str | None = None, max_new_tokens: int | None = None,
             qa_prompt: str = "", trained_markers=None) -> dict:
    """Compress ``text`` and decode from the memory alone. Returns what was generated,
    the token counts and the timings (seconds). The prompts are evaluation's
    (:mod:`icae.models.task_prompts`): with ``trained_markers`` (the checkpoint's) no
    untrained marker is put in a prompt."""
    import torch

    from icae.models import task_prompts as TP

    prompts = model.prompts
    ids = prompts.encode(text)
    if not ids:
        raise ValueError("the text is empty (no tokens)")
    if not model.compresses(len(ids)):
        raise ValueError(
            f"the text has {len(ids)} tokens, fewer than model.min_compress_len="
            f"{model.cfg.min_compress_len}: ICAE would keep it as plain text, so nothing "
            "would be read from memory (pass model.min_compress_len=1 to compress it anyway)")
    slots = model.num_memory_slots(len(ids))
    rule = TP.PromptRule.for_model(model, trained_markers)
    if question is None:
        pieces = TP.autoencoding_prompt(prompts, rule, ids)
        budget = max_new_tokens or len(ids) + 8
    else:
        pieces = TP.qa_prompt(prompts, rule, ids, question, qa_prompt)
        budget = max_new_tokens or 64
    encoded = model.encode(pieces)
    # The decoder's prompt must hold none of the text's tokens: only the memory slots.
    n_placeholders = sum(1 for t in encoded.input_ids if t == model.placeholder_id)
    if n_placeholders != slots:
        raise RuntimeError(f"prompt holds {n_placeholders} memory placeholders, expected "
                           f"{slots}")
    timings: dict = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate([pieces], max_new_tokens=budget, timings=timings)[0]
    total = time.perf_counter() - t0
    generated = prompts.tokenizer.decode(out, skip_special_tokens=True)
    result = {
        "mode": "reconstruct" if question is None else "question",
        "question": question,
        "output": generated,
        "text_tokens": len(ids),
        "memory_slots": slots,
        "compression_rate": len(ids) / slots,
        "mem_size": model.mem_size,
        "configured_rate": model.rate,
        "position_layout": model.layout,
        "generated_tokens": len(out),
        "max_new_tokens": budget,
        "compress_s": timings.get("compress_s"),
        "generate_s": timings.get("generate_s"),
        "total_s": total,
        "device": str(model.device),
    }
    if question is None:
        from icae.evaluation.metrics import bleu1

        result["bleu1_vs_input"] = bleu1(prompts.tokenizer.decode(
            ids, skip_special_tokens=True), generated)
        result["exact"] = generated.strip() == text.strip()
    return result


def report(result: dict) -> str:
    lines = [
        f"text: {result['text_tokens']} tokens -> {result['memory_slots']} memory slots "
        f"(compression {result['compression_rate']:.2f}x; mem_size {result['mem_size']}, "
        f"configured rate {result['configured_rate']:g}, layout {result['position_layout']})",
        f"compress {result['compress_s']:.3f} s, generate {result['generate_s']:.3f} s "
        f"({result['generated_tokens']} tokens, "
        f"{result['generated_tokens'] / max(result['generate_s'], 1e-9):.1f} tokens/s), "
        f"total {result['total_s']:.3f} s on {result['device']}",
    ]
    if result["mode"] == "reconstruct":
        lines.append(f"reconstruction: BLEU-1 {result['bleu1_vs_input']:.3f} against the "
                     f"input{', exact' if result['exact'] else ''}")
        if result["generated_tokens"] >= result["max_new_tokens"]:
            lines.append(f"(stopped at the budget of {result['max_new_tokens']} tokens)")
    return "\n".join(lines)


def run(cfg, args) -> dict:
    """The CLI entry point."""
    import torch

    from icae.models import build_model
    from icae.utils import atomic_write_json, seed_everything

    ckpt = args.checkpoint
    if ckpt is None:
        log.warning("no --checkpoint: the encoder and memory embeddings are untrained, so "
                    "the output is noise (a smoke test only)")
    elif not Path(ckpt).is_dir():
        raise FileNotFoundError(f"--checkpoint {ckpt}: no such folder")
    if cfg.model.model_type != "icae":
        raise ValueError("model.model_type: `icae try` needs an ICAE checkpoint (the plain "
                         "LLM has no memory to read from)")
    text, source = read_text(args.input)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    model = build_model(cfg.model, checkpoint=ckpt)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    load_s = time.perf_counter() - t0
    trained = None
    if ckpt is not None:
        from icae.models.checkpoint import read_meta, trained_markers

        trained = trained_markers(read_meta(ckpt), ckpt)
    result = try_text(model, text, args.question, args.max_new_tokens,
                      qa_prompt=cfg.data.squad.prompt, trained_markers=trained)
    result.update(source=source, checkpoint=ckpt, load_s=load_s)
    sys.stdout.write(result["output"] + "\n")
    sys.stdout.flush()
    print(report(result) + f"\nmodel loaded in {load_s:.2f} s from "
          f"{ckpt or cfg.model.base_model}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, result)
    return result
