"""Evaluation examples for each task: reading prepared data, building prompts, scoring.

Each task turns the rows of its prepared ``eval.jsonl`` into :class:`Example` objects (a
generation prompt made of prompt pieces, the reference, a token budget) and scores one
prediction against its reference. Running the model and writing files is
:mod:`icae.evaluation.run`'s job.

Prompts (``C`` = a :class:`~icae.models.templates.Context` piece):

``ae``       ICAE: ``C [AE]`` (the pre-training autoencoding prompt). The plain LLM has no
             [AE] marker, so it gets a chat prompt ``Repeat the following text
             exactly:\\n\\nC`` (:data:`AE_LLM_INSTRUCTION`). Reference: the context itself.
Every prompt comes from :mod:`icae.models.task_prompts`, the functions training uses,
with the same rule: the [FT] marker iff the context is compressed, and only markers the
evaluated checkpoint trained (``evaluation.checkpoint``'s ``trained_markers``; a
pre-trained-only ICAE gets [LM] where [FT] would be).

``qa``       ``qa_prompt`` over context 0.
``repoqa``   ``repoqa_prompt``. Scored
             as evalplus/repoqa's ``compute_score`` does: ``pass@0.8`` requires the needle
             most similar to the answer, among the repository's needles, to be the target
             and its similarity to be >= 0.8. The repository's needles are a record's
             ``repo_needles`` ({name: code}) when present, else the needles of all tasks of
             the same (language, repo) in the eval file (all of its rows, whatever
             ``evaluation.num_samples``). ``similarity_pass@0.8`` is the looser
             ``similarity to the target >= 0.8`` without the best-match condition.
``trajectories``
             one example per assistant turn after the first: the prompt is every message
             before it, where user messages with ``compress: true`` become contexts
             (``trajectory_turn_prompt``: earlier assistant turns tokenized on their own,
             exactly as in the training sequence; see
             :meth:`~icae.models.templates.PromptBuilder.conversation_prompt`).

The plain LLM reads every ``C`` as text. The baselines change only the ``C`` pieces
(:class:`ContextPolicy`): ``truncate`` keeps the *first* tokens of each context, as many as
ICAE has memory slots for it; ``no_context`` drops them (for QA the user message is then
the instruction and the question alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from icae.config import max_new_tokens_for
from icae.data.io import iter_jsonl
from icae.models.task_prompts import (PromptRule, autoencoding_prompt, qa_prompt,
                                      repoqa_prompt, trajectory_turn_prompt)
from icae.models.templates import Context, Piece, context_slot
from icae.evaluation import metrics as M

AE_LLM_INSTRUCTION = "Repeat the following text exactly:\n\n"

# task -> (dataset name, path under data.prepared_dir, required fields)
DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ae": ("pretrain", "pretrain/eval.jsonl", ("context_ids",)),
    "qa": ("squad", "squad/eval.jsonl", ("context", "question", "answers")),
    "repoqa": ("repoqa", "repoqa/eval.jsonl",
               ("context", "description", "needle_code", "language")),
    "trajectories": ("trajectories", "trajectories/eval.jsonl", ("messages",)),
}


# ---------------------------------------------------------------------------------------
# Reading data


def dataset_path(cfg, task: str) -> Path:
    return Path(cfg.data.prepared_dir) / DATASETS[task][1]


def load_rows(cfg, task: str) -> tuple[Path, list[dict]]:
    """The first ``evaluation.num_samples`` rows (file order) of the task's eval file."""
    path = dataset_path(cfg, task)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: evaluation data for task {task!r} is missing; run "
            "`python -m icae prepare-data --config ...` first (data.prepared_dir="
            f"{cfg.data.prepared_dir!r})")
    numbered = list(iter_jsonl(path, skip_bad_lines=cfg.data.skip_bad_lines))
    if cfg.evaluation.num_samples is not None:
        numbered = numbered[: cfg.evaluation.num_samples]
    if not numbered:
        raise ValueError(f"{path}: the evaluation data set is empty")
    required = DATASETS[task][2]
    rows = []
    for lineno, row in numbered:
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: record lacks field(s) {', '.join(missing)}; "
                             f"was it prepared for task {task!r}?")
        row.setdefault("id", f"line{lineno}")
        rows.append(row)
    return path, rows


# ---------------------------------------------------------------------------------------
# What the model sees of each context


def icae_slot_rule(model_cfg) -> tuple[Callable[[int], bool], Callable[[int], int]]:
    """ICAE's own ``compresses`` and ``num_memory_slots`` for ``model_cfg``, without building
    an ICAE: the methods of :class:`icae.models.icae.ICAE` are called on a stand-in that
    has the attributes they read (``cfg``, ``mem_size``, ``rate``, ``layout``), so the
    truncate baseline and the token accounting follow whatever rule ICAE implements."""
    from types import SimpleNamespace

    from icae.models.icae import ICAE

    proxy = SimpleNamespace(cfg=model_cfg, mem_size=model_cfg.mem_size,
                            rate=model_cfg.mean_compression_rate,
                            layout=model_cfg.position_layout,
                            slot_rule=model_cfg.slot_rule,
                            min_compress_len=model_cfg.min_compress_len)
    # ICAE.compresses calls self.num_memory_slots: bind it on the stand-in too.
    proxy.num_memory_slots = lambda n: ICAE.num_memory_slots(proxy, n)
    return (lambda n: bool(ICAE.compresses(proxy, n)),
            lambda n: int(ICAE.num_memory_slots(proxy, n)))


class ContextPolicy:
    """How many decoder positions stand for a context, and the baseline's edits.

    Whether a context is compressed and into how many slots is ICAE's decision
    (``ICAE.compresses`` / ``ICAE.num_memory_slots``, taken from ``model`` when it is an
    ICAE, else through :func:`icae_slot_rule`), never a formula of its own."""

    def __init__(self, model_cfg, baseline: str = "none", model=None):
        self.is_icae = model_cfg.model_type == "icae"
        self.mem_size = model_cfg.mem_size
        self.rate = model_cfg.mean_compression_rate
        self.min_len = model_cfg.min_compress_len
        self.slot_rule = model_cfg.slot_rule
        self.baseline = baseline
        if model is not None and getattr(model, "compresses_contexts", False):
            self._compresses, self._slots = model.compresses, model.num_memory_slots
        else:
            self._compresses, self._slots = icae_slot_rule(model_cfg)

    def eligible(self, length: int) -> bool:
        """ICAE would compress this context (``ICAE.compresses``)."""
        return length > 0 and self._compresses(length)

    def compresses(self, length: int) -> bool:
        return self.is_icae and self.eligible(length)

    def memory_slots(self, length: int) -> int:
        """Slots ICAE uses for a context (``ICAE.num_memory_slots``), 0 if kept as text."""
        if not self.eligible(length):
            return 0
        return self._slots(length)

    def visible(self, length: int) -> int:
        """Decoder positions that stand for a context of ``length`` tokens. The truncate
        baseline keeps as many tokens as ICAE has slots for that context (all of a context
        ICAE keeps as text; never more tokens than the context has)."""
        if self.baseline == "no_context":
            return 0
        if self.baseline == "truncate":
            return min(length, self.memory_slots(length)) if self.eligible(length) else length
        if self.is_icae and self.eligible(length):
            return self.memory_slots(length)
        return length

    def apply(self, pieces: list[Piece]) -> list[Piece]:
        if self.baseline == "none":
            return pieces
        out: list[Piece] = []
        for p in pieces:
            if isinstance(p, Context):
                if self.baseline == "no_context":
                    continue
                p = Context(tuple(p.ids[: self.visible(len(p.ids))]))  # first tokens
            out.append(p)
        return out

    def account(self, lengths: list[int]) -> dict:
        ctx = sum(lengths)
        mem = sum(self.visible(n) for n in lengths)
        slots = sum(self.memory_slots(n) for n in lengths if self.compresses(n))
        return {"context_tokens": ctx, "memory_tokens": mem, "memory_slots": slots,
                "compression_rate": _rate(ctx, mem),
                "contexts": len(lengths),
                "contexts_compressed": sum(1 for n in lengths if self.compresses(n))}


def _rate(original: int, kept: int) -> float | None:
    if kept == 0:
        return None
    return original / kept


# ---------------------------------------------------------------------------------------
# Examples


@dataclass
class Example:
    id: str
    prompt: list[Piece]
    reference: str
    max_new_tokens: int
    context_lengths: list[int]
    references: list[str] | None = None       # qa: every gold answer
    reference_ids: list[int] | None = None    # ae / trajectories: token targets
    teacher_forced: list[Piece] | None = None  # trajectories: prompt + target (labels)
    tf_tokens: int = 0                         # labelled tokens scored teacher-forced
    meta: dict = field(default_factory=dict)   # copied into the predictions row
    needles: dict[str, str] | None = None      # repoqa: the repository's needles


@dataclass
class TaskContext:
    cfg: Any             # ExperimentConfig
    prompts: Any         # PromptBuilder
    policy: ContextPolicy
    stop_ids: list[int]
    # repoqa: (language, repo) -> {needle name: needle code}, see :func:`repo_needles`
    needles: dict | None = None
    # markers the evaluated checkpoint trained (None: no restriction, e.g. no checkpoint)
    trained_markers: frozenset[str] | None = None

    @property
    def rule(self) -> PromptRule:
        """The prompt rule shared with training: the policy's (= ICAE's) compression
        decision and the checkpoint's trained markers."""
        return PromptRule(self.policy.compresses, self.trained_markers)


def _finish(ctx: TaskContext, ex: Example) -> Example:
    ex.prompt = ctx.policy.apply(ex.prompt)
    if ex.teacher_forced is not None:
        ex.teacher_forced = ctx.policy.apply(ex.teacher_forced)
    return ex


def build_ae(rows: list[dict], ctx: TaskContext) -> list[Example]:
    """Reconstruct ``context_ids``; every row is used (``ae`` and ``lm`` rows alike), and
    the budget is ``len(context) + 1`` (the text and its end token), whatever
    ``evaluation.max_new_tokens`` says: a shorter budget would cut every reconstruction.
    Rows keep ``source`` and ``objective`` (the record's pre-training task, ae or lm)."""
    tok = ctx.prompts.tokenizer
    out = []
    for row in rows:
        ids = [int(t) for t in row["context_ids"]]
        if ctx.policy.is_icae:
            prompt = autoencoding_prompt(ctx.prompts, ctx.rule, ids)
        else:
            msgs = [{"role": "user", "content": AE_LLM_INSTRUCTION + context_slot(0)}]
            prompt = ctx.prompts.chat(msgs, [ids])
        ex = Example(id=str(row["id"]), prompt=prompt,
                     reference=tok.decode(ids, skip_special_tokens=True),
                     reference_ids=ids, max_new_tokens=len(ids) + 1, context_lengths=[len(ids)],
                     meta={"source": row.get("source"), "objective": row.get("task")})
        out.append(_finish(ctx, ex))
    return out


def build_qa(rows: list[dict], ctx: TaskContext) -> list[Example]:
    cfg = ctx.cfg
    out = []
    for row in rows:
        ids = ctx.prompts.encode(row["context"])
        answers = [str(a) for a in row["answers"]] or [""]
        prompt = qa_prompt(ctx.prompts, ctx.rule,
                           None if ctx.policy.baseline == "no_context" else ids,
                           row["question"], cfg.data.squad.prompt)
        ex = Example(id=str(row["id"]), prompt=prompt, reference=answers[0],
                     references=answers,
                     max_new_tokens=max_new_tokens_for(cfg.evaluation, "qa"),
                     context_lengths=[len(ids)],
                     meta={"question": row["question"],
                           **({"title": row["title"]} if "title" in row else {})})
        out.append(_finish(ctx, ex))
    return out


def repo_needles(rows) -> dict[tuple[str, str], dict[str, str]]:
    """(language, repo) -> {needle name: needle code} over ``rows`` (every task of the eval
    file), in file order; a row's own ``repo_needles`` mapping, when it has one, is taken
    as its repository's complete needle list."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    given: set[tuple[str, str]] = set()
    for row in rows:
        key = (str(row.get("language", "python")), str(row.get("repo", "")))
        if isinstance(row.get("repo_needles"), dict):
            if key not in given:
                out[key] = {str(k): str(v) for k, v in row["repo_needles"].items()}
                given.add(key)
            continue
        if key in given:
            continue
        if "needle_code" not in row:
            continue  # a bad row beyond num_samples; load_rows names those it evaluates
        name = str(row.get("needle_name", row.get("id")))
        out.setdefault(key, {}).setdefault(name, row["needle_code"])
    return out


def build_repoqa(rows: list[dict], ctx: TaskContext) -> list[Example]:
    cfg = ctx.cfg
    needles = ctx.needles if ctx.needles is not None else repo_needles(rows)
    out = []
    for row in rows:
        ids = ctx.prompts.encode(row["context"])
        prompt = repoqa_prompt(ctx.prompts, ctx.rule, ids, row["description"],
                               cfg.data.repoqa.instruction)
        meta = {k: row[k] for k in ("language", "repo", "needle_name", "position_ratio")
                if k in row}
        key = (str(row.get("language", "python")), str(row.get("repo", "")))
        meta["needle_name"] = str(row.get("needle_name", row.get("id")))
        repo = dict(needles.get(key) or {})
        repo.setdefault(meta["needle_name"], row["needle_code"])
        ex = Example(id=str(row["id"]), prompt=prompt, reference=row["needle_code"],
                     max_new_tokens=max_new_tokens_for(cfg.evaluation, "repoqa"),
                     context_lengths=[len(ids)], meta=meta, needles=repo)
        out.append(_finish(ctx, ex))
    return out


def _cut_at_stop(ids: list[int], stops: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i], True
    return ids, False


def build_trajectories(rows: list[dict], ctx: TaskContext) -> list[Example]:
    """One example per assistant turn, skipping the first assistant message (part of the
    uncompressed first exchange), at most ``evaluation.max_turns_per_trajectory`` turns.

    Reference ids: the template's rendering of the answer up to its end-of-turn token (what
    greedy decoding must produce). Teacher-forced scoring covers those tokens plus the
    end-of-turn token; the budget for autoregressive decoding is that many tokens."""
    max_turns = ctx.cfg.evaluation.max_turns_per_trajectory
    stops = set(ctx.stop_ids)
    out = []
    for row in rows:
        messages = row["messages"]
        if not isinstance(messages, list):
            raise ValueError(f"trajectory {row['id']!r}: messages must be a list")
        assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        for turn, idx in enumerate(assistant[1:][:max_turns], 1):
            target = messages[idx]["content"]
            prompt, contexts = trajectory_turn_prompt(ctx.prompts, messages, idx)
            teacher_forced, _ = trajectory_turn_prompt(ctx.prompts, messages, idx, target)
            target_ids = list(teacher_forced[-1].ids)  # the template's rendering of the turn
            ref_ids, stopped = _cut_at_stop(target_ids, stops)
            ex = Example(
                id=f"{row['id']}#{turn}", prompt=prompt,
                reference=target, reference_ids=ref_ids, max_new_tokens=len(ref_ids) + 1,
                context_lengths=[len(c) for c in contexts],
                teacher_forced=teacher_forced,
                tf_tokens=len(ref_ids) + int(stopped),
                meta={"trajectory_id": str(row["id"]), "turn": turn, "message_index": idx,
                      "num_contexts": len(contexts)})
            out.append(_finish(ctx, ex))
    return out


BUILDERS: dict[str, Callable[[list[dict], TaskContext], list[Example]]] = {
    "ae": build_ae, "qa": build_qa, "repoqa": build_repoqa,
    "trajectories": build_trajectories,
}


# ---------------------------------------------------------------------------------------
# Per-example scores


def score(task: str, ex: Example, prediction: str, pred_ids: list[int]) -> dict[str, float]:
    """Per-example metrics (fractions in [0, 1]; SQuAD EM is 0/1 and F1 a fraction here,
    the corpus numbers in percent are computed by the caller)."""
    if task == "ae":
        return {"bleu1": M.bleu1(ex.reference, prediction),
                "token_accuracy": M.token_accuracy(pred_ids, ex.reference_ids),
                "exact_match": M.exact_match(prediction, ex.reference)}
    if task == "qa":
        return {"exact_match": M.squad_exact_match(prediction, ex.references),
                "f1": M.squad_f1(prediction, ex.references),
                "bleu1": M.bleu1(ex.reference, prediction)}
    if task == "repoqa":
        lang = ex.meta.get("language", "python")
        sim = M.repoqa_similarity(prediction, ex.reference, lang)
        needles = ex.needles or {ex.meta.get("needle_name", ex.id): ex.reference}
        search = M.repoqa_needle_search(prediction, needles, ex.meta.get("needle_name", ex.id),
                                        lang, threshold=0.8)
        return {"similarity": sim,
                "pass@0.8": float(search["passed"]),  # evalplus/repoqa's definition
                "similarity_pass@0.8": float(M.repoqa_pass(sim, 0.8)),  # looser
                "best_needle_match": float(search["is_best_match"]),
                "bleu1": M.bleu1(ex.reference, prediction)}
    if task == "trajectories":
        return {"ar_bleu1": M.bleu1(ex.reference, prediction),
                "ar_token_accuracy": M.token_accuracy(pred_ids, ex.reference_ids),
                "ar_exact_match": M.exact_match(prediction, ex.reference),
                # the seed's definitions, for comparison with its published numbers
                "ar_seed_token_accuracy": M.seed_token_accuracy(pred_ids, ex.reference_ids),
                "ar_seed_exact_match_first_line": M.seed_exact_match_first_line(
                    prediction, ex.reference)}
    raise ValueError(f"unknown task {task!r}")


def finite(x: Any) -> Any:
    """NaN / inf -> None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
