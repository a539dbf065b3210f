"""Prepared records -> prompt pieces -> encoded training examples, for every data set.

The same builders serve ICAE and the plain-LLM baseline: a prompt names its contexts with
:class:`~icae.models.templates.Context` pieces, which ICAE compresses and the baseline
reads as text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from icae.config import ExperimentConfig
from icae.models.base import EncodedPrompt
from icae.models.task_prompts import (PromptRule, first_target_index, qa_prompt,
                                      repoqa_answer, repoqa_prompt, trajectory_sequences)
from icae.models.templates import Piece

log = logging.getLogger(__name__)

TASK_AE, TASK_LM, TASK_FT = 0, 1, 2


def is_icae(model) -> bool:
    return model.compresses_contexts


def pretrain_pieces(model, rec: dict) -> tuple[list[Piece], int]:
    if rec["task"] == "ae":
        return model.prompts.autoencoding(rec["context_ids"]), TASK_AE
    return model.prompts.language_modelling(rec["context_ids"], rec["continuation_ids"]), TASK_LM


# Fine-tuning prompts come from icae.models.task_prompts, the functions evaluation uses; a
# training run may use every marker (it trains those it uses), so the rule has no marker
# restriction here.


def squad_pieces(model, rec: dict, prompt: str, answer: str | None) -> list[Piece]:
    return qa_prompt(model.prompts, PromptRule.for_model(model),
                     model.prompts.encode(rec["context"]), rec["question"], prompt, answer)


def repoqa_pieces(model, rec: dict, instruction: str, answer: str | None) -> list[Piece]:
    return repoqa_prompt(model.prompts, PromptRule.for_model(model),
                         model.prompts.encode(rec["context"]), rec["description"],
                         instruction, answer)


def trajectory_sequences_of(model, rec: dict, upto: int | None = None) -> list[list[Piece]]:
    """The training sequences of a trajectory's first ``upto`` messages (one, or one per
    target turn for templates that re-render earlier turns: see
    :func:`icae.models.task_prompts.trajectory_sequences`)."""
    messages = rec["messages"][:upto] if upto else rec["messages"]
    return trajectory_sequences(model.prompts, messages)


def trajectory_pieces(model, rec: dict, upto: int | None = None) -> list[Piece]:
    """The single training sequence of a trajectory (prefix-stable templates only)."""
    seqs = trajectory_sequences_of(model, rec, upto)
    if len(seqs) != 1:
        raise ValueError("this chat template re-renders earlier turns: the trajectory is "
                         "one sequence per target turn (use trajectory_sequences_of)")
    return seqs[0]


def markers_in(model, encoded: list[EncodedPrompt]) -> list[str]:
    """The learned markers that occur in ``encoded`` training examples (their embeddings
    get gradients in this run); empty for the plain LLM, which has none."""
    ids = getattr(model, "marker_ids", None)
    if not ids:
        return []
    seen = set()
    for enc in encoded:
        seen.update(enc.input_ids)
    return sorted(kind for kind, token in ids.items() if token in seen)


@dataclass
class BuildStats:
    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    reasons: dict = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped += 1
        self.reasons[why] = self.reasons.get(why, 0) + 1


def _fit(enc: EncodedPrompt, max_length: int, stats: BuildStats, placeholder_id: int | None
         ) -> EncodedPrompt | None:
    n = len(enc.input_ids)
    if n <= max_length:
        return enc
    last_mem = max((i for i, t in enumerate(enc.input_ids) if t == placeholder_id),
                   default=-1)
    if last_mem >= max_length - 1:
        stats.skip("memory does not fit max_length")
        return None
    stats.truncated += 1
    enc.input_ids = enc.input_ids[:max_length]
    enc.labels = enc.labels[:max_length]
    enc.position_ids = enc.position_ids[:max_length]
    return enc


def encode_records(model, cfg: ExperimentConfig, dataset: str, records: list[dict],
                   max_length: int) -> tuple[list[EncodedPrompt], BuildStats]:
    """Encode every record of ``dataset`` (pretrain, squad, repoqa, trajectories)."""
    stats = BuildStats()
    out: list[EncodedPrompt] = []
    ph = getattr(model, "placeholder_id", None)
    for rec in records:
        if dataset == "pretrain":
            pieces, task = pretrain_pieces(model, rec)
            enc = model.encode(pieces, task=task)
        elif dataset == "squad":
            answers = rec.get("answers") or []
            if not answers:
                stats.skip("no gold answer")
                continue
            enc = model.encode(squad_pieces(model, rec, cfg.data.squad.prompt, answers[0]))
        elif dataset == "repoqa":
            enc = model.encode(repoqa_pieces(model, rec, cfg.data.repoqa.instruction,
                                             repoqa_answer(rec)))
        elif dataset == "trajectories":
            seqs = [model.encode(p) for p in trajectory_sequences_of(model, rec)]
            if len(seqs) == 1:
                upto = len(rec["messages"])
                enc = seqs[0]
                # Drop whole trailing turns rather than cut through an observation's memory.
                while len(enc.input_ids) > max_length and upto > 4:
                    upto -= 2
                    enc = model.encode(trajectory_pieces(model, rec, upto))
                if upto < len(rec["messages"]):
                    stats.truncated += 1
            else:
                # One sequence per target turn, each longer than the one before: keep those
                # that fit whole (a cut would drop the target at their end).
                fitting = [e for e in seqs if len(e.input_ids) <= max_length]
                if len(fitting) < len(seqs):
                    stats.truncated += 1
                for e in fitting[:-1]:
                    if e.num_target_tokens:
                        out.append(e)
                        stats.examples += 1
                if not fitting:
                    stats.skip("first target turn does not fit max_length")
                    continue
                enc = fitting[-1]
        else:
            raise ValueError(f"unknown data set {dataset!r}")
        if enc.num_target_tokens == 0:
            stats.skip("no target tokens")
            continue
        fitted = _fit(enc, max_length, stats, ph)
        if fitted is not None and fitted.num_target_tokens > 0:
            out.append(fitted)
            stats.examples += 1
        elif fitted is not None:
            stats.skip("no target tokens within max_length")
    return out, stats


def prepared_file(cfg: ExperimentConfig, dataset: str, split: str) -> Path:
    return Path(cfg.data.prepared_dir) / dataset / f"{split}.jsonl"


def load_records(cfg: ExperimentConfig, dataset: str, split: str) -> list[dict]:
    from icae.data.io import read_jsonl

    path = prepared_file(cfg, dataset, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m icae prepare-data` for {dataset} first")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path} holds no examples")
    return records
