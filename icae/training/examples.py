"""Prepared records -> prompt pieces -> encoded training examples, for every data set.

The same builders serve ICAE and the plain-LLM baseline: a prompt names its contexts with
:class:`~icae.models.templates.Context` pieces, which ICAE compresses and the baseline
reads as text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from icae import tasks
from icae.config import ExperimentConfig
from icae.models.base import EncodedPrompt
from icae.models.objectives import Objective
from icae.models.templates import Piece

log = logging.getLogger(__name__)


def pretrain_pieces(model, rec: dict) -> tuple[list[Piece], Objective]:
    if rec["task"] == Objective.AE.marker:
        return model.prompts.autoencoding(rec["context_ids"]), Objective.AE
    return model.prompts.language_modelling(rec["context_ids"], rec["continuation_ids"]), Objective.LM


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


def keep_example(enc: EncodedPrompt, max_length: int, stats: BuildStats, model
                 ) -> list[EncodedPrompt]:
    """``[enc]`` cut to ``max_length`` (never through a memory), or ``[]`` with the reason
    counted when it has no target tokens (left)."""
    if enc.num_target_tokens == 0:
        stats.skip("no target tokens")
        return []
    fitted = _fit(enc, max_length, stats, getattr(model, "placeholder_id", None))
    if fitted is None:
        return []
    if fitted.num_target_tokens == 0:
        stats.skip("no target tokens within max_length")
        return []
    stats.examples += 1
    return [fitted]


def encode_records(model, cfg: ExperimentConfig, dataset: str, records: list[dict],
                   max_length: int) -> tuple[list[EncodedPrompt], BuildStats]:
    """Encode every record of ``dataset`` with its task's training prompt
    (:meth:`icae.tasks.base.Task.training_examples`)."""
    task = tasks.by_dataset(dataset)
    stats = BuildStats()
    out: list[EncodedPrompt] = []
    for rec in records:
        out += task.training_examples(model, cfg, rec, max_length, stats)
    return out, stats


def load_records(cfg: ExperimentConfig, dataset: str, split: str) -> list[dict]:
    from icae.data.io import read_jsonl

    path = tasks.by_dataset(dataset).prepared_file(cfg, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m icae prepare-data` for {dataset} first")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path} holds no examples")
    return records
