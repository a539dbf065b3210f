"""``python -m icae evaluate``: ICAE or the plain-LLM baseline on one task.

Tasks (``evaluation.task``) and their data (``<data.prepared_dir>/<data set>/eval.arrow``),
prompts and metrics are the modules of :mod:`icae.tasks`; the metric rows and files are
built by :mod:`icae.evaluation.summary`. The model is built from
``model.*`` and, when ``evaluation.checkpoint`` is set, the trained parameters stored
there; with ``checkpoint: null`` the untrained model is evaluated (LoRA adapters are the
identity at initialisation; ICAE's memory and marker embeddings are random, drawn after
seeding with ``seed``).

Prompts never hold a learned marker that the checkpoint did not train (its
``trained_markers``, :func:`icae.models.checkpoint.trained_markers`): a pre-trained-only
ICAE is asked QA / RepoQA questions with [LM] where a fine-tuned one has [FT]
(:mod:`icae.models.task_prompts`). ``summary.json`` records ``trained_markers`` and the
``prompt_markers`` actually used. With ``checkpoint: null`` nothing restricts the markers
(every learned embedding of the untrained model is random anyway).

Baselines (``evaluation.baseline``, plain LLM only): ``none`` reads every context in full,
``truncate`` keeps the first tokens of each context, as many as ICAE has memory slots for
it (``mem_size * ceil(L / (mem_size * mean_compression_rate))``, never more than ``L``;
contexts ICAE would keep as text because of ``model.min_compress_len`` stay whole), and
``no_context`` removes the contexts.

Examples: the first ``evaluation.num_samples`` rows of the file in file order (for
trajectories: the first N trajectories); decoding is greedy with a KV cache, in batches
of ``evaluation.batch_size`` prompts grouped by length (longest first, ties in file
order), so runs are deterministic. Budgets (:meth:`icae.tasks.base.Task.max_new_tokens`): qa and
repoqa take ``evaluation.max_new_tokens_by_task.<task>`` when set, else the task's default
(repoqa: 1024, the official RepoQA harness's ``max_new_tokens``), else
``evaluation.max_new_tokens``; ae and trajectories decode the reference length plus one
(its end token), since their metrics compare whole sequences.

Outputs in ``evaluation.output_dir`` (default
``<output_root>/<run_name>/eval/<evaluation.variant>/<task>``), written into a sibling
temporary folder that then replaces the output folder as a whole (a failure leaves the
previous outputs untouched; read-only outputs are refused without ``--overwrite``):

``predictions.jsonl``
    one line per example (a trajectory turn for ``trajectories``), in file order: ``id``,
    ``prediction``, ``reference`` (``references`` too for qa), ``metrics`` (per example),
    ``context_tokens``, ``memory_tokens``, ``memory_slots``, ``compression_rate``,
    ``prompt_tokens``, ``generated_tokens``, ``timings`` and task fields.
``metrics.csv``
    long format, one row per metric, columns :data:`CSV_COLUMNS`.
``summary.json``
    the same metrics as a mapping, their ``n``, units and run description.
``config.yaml``
    the resolved experiment config.

Token counts per example: ``context_tokens`` are the tokens of all contexts in the prompt;
``memory_tokens`` the decoder positions that stand for them (ICAE: memory slots, plus the
text of contexts too short to compress; LLM: the context tokens it reads, all of them,
the truncated part, or none); ``memory_slots`` ICAE's learned slots alone;
``compression_rate = context_tokens / memory_tokens`` (null when nothing is kept);
``contexts`` / ``contexts_compressed`` count the prompt's contexts and those ICAE
compresses. Over the whole run this is ``compression_rate_effective`` (in ``metrics.csv``
and ``summary.json``, next to ``compression_rate_configured``: a context shorter than
``mem_size * rate`` or kept as text lowers the effective rate below the configured one).

Timings come from the model (``compress_s``: encoder and memory; ``generate_s``: decoding
including the prompt's prefill, split into ``prefill_s`` and ``decode_s``) per batch and are
split evenly over its examples, so a per-example ``latency_s`` is the batch time divided by
the batch size. ``tokens_per_second`` = generated tokens / generation time.

Inference settings (:mod:`icae.evaluation.decoding`): ``evaluation.decoding`` picks the KV
cache (static with CUDA-graph decode steps on CUDA by default); with
``evaluation.memory_cache`` ICAE compresses each distinct context once per evaluation
(``compress_s`` counts only the encoder calls made); with ``evaluation.incremental_turns``
the turns of a trajectory run in order on one growing KV cache (batch 1), and a turn's
timings are the compression of its new observations, the prefill of its new tokens, and
its decoding (``prefill_tokens``, ``reused_tokens``, ``cache_tokens`` and
``kv_cache_bytes`` in its ``timings``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from icae import tasks
from icae.data.io import write_jsonl
from icae.evaluation import metrics as M
from icae.evaluation.policy import ContextPolicy
from icae.evaluation.summary import build_summary, finite, metrics_csv, summarize
from icae.models.base import IGNORE, collate
from icae.tasks import Example, Task, TaskContext
from icae.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def output_dir(cfg) -> Path:
    e = cfg.evaluation
    if e.output_dir:
        return Path(e.output_dir)
    return Path(cfg.output_root) / cfg.run_name / "eval" / e.variant / e.task


def run(cfg, args=None) -> dict:
    """CLI entry point (``python -m icae evaluate``)."""
    summary = evaluate(cfg, overwrite=bool(getattr(args, "overwrite", False)))
    task = tasks.get(cfg.evaluation.task)
    log.info("evaluate %s: %s -> %s", task.name,
             ", ".join(f"{k}={v:.4g}" for k, v in summary["metrics"].items()
                       if k in task.metrics and v is not None),
             summary["output_dir"])
    return summary


def load_rows(cfg, task: Task) -> tuple[Path, list[dict]]:
    """The first ``evaluation.num_samples`` rows (file order) of the task's eval split."""
    from icae.data.prepared import read_records

    path = task.prepared_file(cfg, "eval")
    try:
        records = read_records(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{path}: evaluation data for task {task.name!r} is missing ({exc}); run "
            "`python -m icae prepare-data --config ...` first (data.prepared_dir="
            f"{cfg.data.prepared_dir!r})") from None
    n = len(records)
    if cfg.evaluation.num_samples is not None:
        n = min(n, cfg.evaluation.num_samples)
    if not n:
        raise ValueError(f"{path}: the evaluation data set is empty")
    rows = []
    for i in range(n):
        row = records[i]
        missing = [k for k in task.eval_fields if k not in row]
        if missing:
            raise ValueError(f"{path}: record {i + 1} lacks field(s) {', '.join(missing)}; "
                             f"was it prepared for task {task.name!r}?")
        row.setdefault("id", f"record{i + 1}")
        rows.append(row)
    return path, rows


def check_checkpoint(path: str | None, model_cfg) -> dict | None:
    """Fail early, before any data or model is loaded: a missing checkpoint, or one whose
    settings (position layout, compression rate, memory size, adapter) differ from
    ``model.*``, is an error naming the key (the same rule as fine-tuning and resuming)."""
    if not path:
        return None
    from icae.models.checkpoint import check_settings, read_meta

    if not Path(path).exists():
        raise FileNotFoundError(f"evaluation.checkpoint: {path} does not exist")
    meta = read_meta(path)  # FileNotFoundError when the folder is not a checkpoint
    check_settings(meta, model_cfg, str(path))
    return meta


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Before any generation: the outputs can be written (the folder is replaced as a whole
    through a sibling temporary folder, so its parent must take new entries), and
    existing read-only outputs are protected unless ``overwrite``."""
    import stat
    import tempfile

    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"evaluation output {out_dir} exists and is not a folder")
        locked = [p.name for p in [out_dir, *out_dir.iterdir()]
                  if not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)]
        if locked and not overwrite:
            raise ValueError(
                f"evaluation output {out_dir} holds read-only outputs ({', '.join(locked[:4])})"
                ": they are protected; pass --overwrite to replace them, or set "
                "evaluation.output_dir elsewhere")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".probe")
        os.rmdir(probe)
    except OSError as exc:
        raise ValueError(f"evaluation output {out_dir} cannot be written ({exc}); fix the "
                         "permissions or set evaluation.output_dir elsewhere") from None


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(cfg, model=None, overwrite: bool = False) -> dict:
    """Evaluate ``cfg.evaluation.task``; build the model from ``cfg`` unless one is given.
    Returns the summary (also written to ``summary.json``)."""
    from icae.utils import seed_everything

    e = cfg.evaluation
    try:
        task = tasks.get(e.task)
    except ValueError as exc:
        raise ValueError(f"evaluation.task: {exc}") from None
    out_dir = output_dir(cfg)
    data_path, rows = load_rows(cfg, task)
    meta = check_checkpoint(e.checkpoint, cfg.model)
    check_output_dir(out_dir, overwrite)
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    if model is None:
        from icae.models import build_model

        if e.checkpoint is None:
            log.warning("evaluation.checkpoint is null: evaluating the untrained %s model",
                        cfg.model.model_type)
        model = build_model(cfg.model, checkpoint=e.checkpoint)
        model.to(_device())
    model.eval()
    model_cfg = model.cfg
    if e.baseline != "none" and model_cfg.model_type != "llm":
        raise ValueError("evaluation.baseline: the truncate and no_context baselines read "
                         "plain text: set model.model_type=llm")
    policy = ContextPolicy(model_cfg, e.baseline, model=model)
    trained = None
    if meta is not None and model_cfg.model_type == "icae":
        from icae.models.checkpoint import trained_markers

        trained = trained_markers(meta, e.checkpoint)
    tctx = TaskContext(cfg, model.prompts, policy, list(model.stop_ids),
                       data=task.evaluation_data(cfg, data_path), trained_markers=trained)
    try:
        examples = task.build_examples(rows, tctx)
    except ValueError as exc:
        raise ValueError(f"evaluation.checkpoint={e.checkpoint}: {exc}") from None
    if not examples:
        raise ValueError(f"{data_path}: no example to evaluate for task {task.name!r}"
                         + task.no_examples_hint)
    log.info("evaluate %s on %d examples from %s (%s%s)", task.name, len(examples), data_path,
             model_cfg.model_type, f", baseline {e.baseline}" if e.baseline != "none" else "")

    from icae.evaluation import decoding as D

    with D.inference_settings(model, e) as memory_stats:
        incremental = task.turns and e.incremental_turns
        reason = D.incremental_unsupported_reason(model, examples) if incremental else None
        if reason:
            log.warning("evaluation.incremental_turns: full prompts per turn instead (%s)",
                        reason)
            incremental = False
        gen = (D.generate_turns_incrementally(model, examples, e.progress) if incremental
               else generate_examples(model, examples, e.batch_size, e.progress))
        tf = (teacher_forced_scores(model, examples, e.batch_size, e.progress)
              if task.teacher_forced else None)
    gen["memory_cache"] = memory_stats
    gen["incremental_turns"] = incremental

    tok = model.prompts.tokenizer
    records = []
    for i, ex in enumerate(examples):
        ids = gen["ids"][i]
        text = tok.decode(ids, skip_special_tokens=True)
        scores = task.score(ex, text, ids)
        timings = dict(gen["timings"][i])
        if tf is not None:
            scores.update(tf[i]["metrics"])
            scores.update(teacher_forced_text_scores(tok, tf[i]["pred_ids"],
                                                     tf[i]["target_ids"]))
            timings["teacher_forced_s"] = tf[i]["seconds"]
        acct = policy.account(ex.context_lengths)
        rec = {"id": ex.id, "prediction": text, "reference": ex.reference}
        if ex.references is not None:
            rec["references"] = ex.references
        rec.update(ex.meta)
        rec["metrics"] = {k: finite(v) for k, v in scores.items()}
        rec.update(acct)
        rec["prompt_tokens"] = gen["prompt_tokens"][i]
        rec["generated_tokens"] = len(ids)
        if tf is not None:
            rec["teacher_forced_tokens"] = tf[i]["tokens"]
        rec["timings"] = timings
        records.append(rec)

    wall = time.perf_counter() - t_start
    metrics = summarize(task, records, gen, wall, policy)
    summary = build_summary(cfg, model_cfg, task, data_path, out_dir, metrics, meta, model)
    summary["trained_markers"] = None if trained is None else sorted(trained)
    summary["prompt_markers"] = prompt_markers(examples)

    from icae.config import write_resolved_config
    from icae.data.io import relax_permissions
    from icae.utils import atomic_directory

    # All outputs or none: written beside, then swapped in with one rename.
    with atomic_directory(out_dir) as tmp:
        write_jsonl(tmp / "predictions.jsonl", records)
        write_resolved_config(cfg, tmp)
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_text(tmp / "metrics.csv", metrics_csv(cfg, model_cfg, task, metrics))
        relax_permissions(tmp)
    return summary


# ---------------------------------------------------------------------------------------
# Running the model


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def _progress(total: int, desc: str, enabled: bool):
    from icae.progress import progress

    return progress(total, desc, enabled, unit="ex")


def generate_examples(model, examples: list[Example], batch_size: int, progress: bool
                      ) -> dict:
    """Greedy, KV-cached, batched decoding. Returns per-example token ids (cut to each
    example's own budget), prompt lengths, timings, and batch totals."""
    n = len(examples)
    prompt_tokens = [len(model.encode(ex.prompt).input_ids) for ex in examples]
    ctx_tokens = [sum(ex.context_lengths) for ex in examples]
    order = sorted(range(n), key=lambda i: (-prompt_tokens[i], -ctx_tokens[i], i))
    ids: list[list[int] | None] = [None] * n
    per_ex: list[dict | None] = [None] * n
    totals = {"compress_s": 0.0, "generate_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0,
              "decoded_tokens": 0}
    with _progress(n, "generate", progress) as bar:
        for batch in _batches(order, batch_size):
            timings: dict = {}
            budget = max(examples[i].max_new_tokens for i in batch)
            out = model.generate([examples[i].prompt for i in batch], max_new_tokens=budget,
                                 timings=timings)
            c_s = float(timings.get("compress_s", 0.0))
            g_s = float(timings.get("generate_s", 0.0))
            totals["compress_s"] += c_s
            totals["generate_s"] += g_s
            totals["prefill_s"] += float(timings.get("prefill_s", 0.0))
            totals["decode_s"] += float(timings.get("decode_s", 0.0))
            totals["decoded_tokens"] += sum(len(o) for o in out)
            B = len(batch)
            for i, o in zip(batch, out):
                ids[i] = list(o[: examples[i].max_new_tokens])
                per_ex[i] = {"compress_s": c_s / B, "generate_s": g_s / B,
                             "latency_s": (c_s + g_s) / B, "batch_size": B}
            bar.update(B)
    return {"ids": ids, "prompt_tokens": prompt_tokens, "timings": per_ex, **totals}


@torch.no_grad()
def teacher_forced_scores(model, examples: list[Example], batch_size: int, progress: bool
                          ) -> list[dict]:
    """One forward pass per batch with each target in the prompt: accuracy of the argmax
    next-token prediction and mean cross-entropy over the first ``tf_tokens`` labelled
    tokens of each example (the answer and its end-of-turn token)."""
    encoded = [model.encode(ex.teacher_forced) for ex in examples]
    n = len(examples)
    order = sorted(range(n), key=lambda i: (-len(encoded[i].input_ids), i))
    results: list[dict | None] = [None] * n
    with _progress(n, "teacher-forced", progress) as bar:
        for batch in _batches(order, batch_size):
            t0 = time.perf_counter()
            b = {k: v.to(model.device) for k, v in
                 collate([encoded[i] for i in batch], model.pad_id).items()}
            labels = b.pop("labels")
            hidden = model(**b)["hidden_states"]
            y = labels[:, 1:]
            rows, cols, counts = [], [], []
            for r, i in enumerate(batch):
                pos = (y[r] != IGNORE).nonzero().flatten()[: examples[i].tf_tokens]
                rows.append(torch.full_like(pos, r))
                cols.append(pos)
                counts.append(len(pos))
            rows_t, cols_t = torch.cat(rows), torch.cat(cols)
            logits = model.lm_head(hidden[:, :-1][rows_t, cols_t]).float()
            target = y[rows_t, cols_t]
            argmax = logits.argmax(-1)
            correct = (argmax == target).float().cpu()
            losses = F.cross_entropy(logits, target, reduction="none").cpu()
            argmax, target = argmax.cpu().tolist(), target.cpu().tolist()
            elapsed = (time.perf_counter() - t0) / len(batch)
            start = 0
            for i, k in zip(batch, counts):
                nan = float("nan")
                results[i] = {"metrics": {
                    "tf_token_accuracy": float(correct[start:start + k].mean()) if k else nan,
                    "tf_exact_match": float(bool(correct[start:start + k].all())) if k else nan,
                    "tf_loss": float(losses[start:start + k].mean()) if k else nan},
                    "pred_ids": argmax[start:start + k], "target_ids": target[start:start + k],
                    "tokens": k, "seconds": elapsed}
                start += k
            bar.update(len(batch))
    return results


def prompt_markers(examples: list[Example]) -> list[str]:
    """The learned markers that occur in the evaluated prompts (for the summary: a reader
    can check them against the checkpoint's ``trained_markers``)."""
    from icae.models.templates import Marker

    kinds = {p.kind for ex in examples for pieces in (ex.prompt, ex.teacher_forced or [])
             for p in pieces if isinstance(p, Marker)}
    return sorted(kinds)


def teacher_forced_text_scores(tok, pred_ids: list[int], target_ids: list[int]) -> dict:
    """The seed's teacher-forced text metrics: the argmax predictions at the labelled
    positions and the labels, decoded without special tokens and stripped, scored with
    BLEU-1 and the seed's first-line exact match."""
    if not target_ids:
        return {"tf_bleu1": float("nan"), "tf_seed_exact_match_first_line": float("nan")}
    hyp = tok.decode(pred_ids, skip_special_tokens=True).strip()
    ref = tok.decode(target_ids, skip_special_tokens=True).strip()
    return {"tf_bleu1": M.bleu1(ref, hyp),
            "tf_seed_exact_match_first_line": M.seed_exact_match_first_line(hyp, ref)}
