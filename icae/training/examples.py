"""Prepared records -> prompt pieces -> encoded training examples, for every data set.

The same builders serve ICAE and the plain-LLM baseline: a prompt names its contexts with
:class:`~icae.models.templates.Context` pieces, which ICAE compresses and the baseline
reads as text.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from icae import tasks
from icae.config import ExperimentConfig
from icae.data.prepared import PreparedRecords
from icae.models.base import EncodedPrompt
from icae.models.objectives import Objective
from icae.models.templates import Piece

log = logging.getLogger(__name__)


def pretrain_pieces(model, rec: dict) -> tuple[list[Piece], Objective]:
    if rec["task"] == Objective.AE.marker:
        return model.prompts.autoencoding(rec["context_ids"]), Objective.AE
    if rec["task"] == Objective.RECALL.marker:
        return (model.prompts.recall(rec["context_ids"], rec["prompt_ids"],
                                     rec["continuation_ids"]), Objective.RECALL)
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
    # of ``examples``: autoencoding examples added to a fine-tuning set (finetune.ae_ratio)
    autoencoding: int = 0

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


def _draw(seed: int, context: Sequence[int]) -> float:
    """A uniform number in [0, 1) fixed by the seed and the context's tokens: a context
    that several records share (SQuAD's questions on one paragraph) is drawn the same way
    for each, and every rebuild of a set draws the same."""
    digest = hashlib.blake2b(np.asarray(context, dtype=np.int64).tobytes(),
                             key=seed.to_bytes(8, "little", signed=True), digest_size=8)
    return int.from_bytes(digest.digest(), "little") / 2.0 ** 64


def record_examples(task, model, cfg: ExperimentConfig, record: dict, max_length: int,
                    stats: BuildStats, ae_ratio: float = 0.0) -> list[EncodedPrompt]:
    """A fine-tuning record's examples: its task's (:meth:`icae.tasks.base.Task.
    training_examples`) and, with ``ae_ratio`` (``finetune.ae_ratio``) for ICAE, for that
    fraction of the contexts (drawn by :func:`_draw`) one more example that reconstructs
    the first context of the record's first example from its memory, as pre-training
    does."""
    examples = task.training_examples(model, cfg, record, max_length, stats)
    if not (ae_ratio and examples and task.dataset != "pretrain"
            and getattr(model, "compresses_contexts", False) and examples[0].contexts):
        return examples
    context = examples[0].contexts[0][0]
    if _draw(cfg.seed, context) >= ae_ratio:
        return examples
    extra = keep_example(model.encode(model.prompts.autoencoding(context), task=Objective.AE),
                         max_length, stats, model)
    stats.autoencoding += len(extra)
    return examples + extra


def encode_records(model, cfg: ExperimentConfig, dataset: str, records: Sequence[dict],
                   max_length: int, training: bool = True
                   ) -> tuple[list[EncodedPrompt], BuildStats]:
    """Encode every record of ``dataset`` with its task's training prompt
    (:func:`record_examples`; autoencoding examples, ``finetune.ae_ratio``, only in a
    ``training`` set), all at once (small sets and tests; training uses
    :class:`LazyExamples`, which gives the same examples)."""
    task = tasks.by_dataset(dataset)
    stats = BuildStats()
    ratio = cfg.finetune.ae_ratio if training else 0.0
    out: list[EncodedPrompt] = []
    for rec in records:
        out += record_examples(task, model, cfg, rec, max_length, stats, ratio)
    return out, stats


class LazyExamples(Dataset):
    """The training examples of prepared records, encoded when read.

    ``dataset[k]`` is the ``k``-th example :func:`encode_records` would give: a record
    yields none, one or several examples (skips; a trajectory per target turn), so an
    index pass at construction encodes each record once and keeps only how many
    examples it gave (``starts``: 8 bytes a record), the :class:`BuildStats` and the
    markers the examples use. ``dataset[k]`` finds its record by bisection and encodes
    it again (the last record's examples are kept, for the next turn of the same
    trajectory). Nothing else is held: the records stay in their memory-mapped file, so
    memory does not grow with the set. The length, and the example at every index, are
    those of the eager list, so the Trainer's seeded sampler shuffles them the same way
    and a resumed run sees the same examples.
    """

    def __init__(self, model, cfg: ExperimentConfig, dataset: str, records: Sequence[dict],
                 max_length: int, training: bool = True):
        self.model, self.cfg, self.dataset = model, cfg, dataset
        self.records, self.max_length = records, max_length
        # finetune.ae_ratio's autoencoding examples belong to training sets only: an
        # evaluation loss stays the task's own.
        self.ae_ratio = cfg.finetune.ae_ratio if training else 0.0
        self.task = tasks.by_dataset(dataset)
        self.stats = BuildStats()
        counts = np.zeros(len(records), dtype=np.int64)
        markers: set[str] = set()
        for r, rec in enumerate(records):
            examples = record_examples(self.task, model, cfg, rec, max_length, self.stats,
                                       self.ae_ratio)
            counts[r] = len(examples)
            markers.update(markers_in(model, examples))
        self.markers = sorted(markers)
        self.starts = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self._cached: tuple[int, list[EncodedPrompt]] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, k: int) -> EncodedPrompt:
        if not 0 <= k < len(self):
            raise IndexError(f"{self.dataset}: example {k} out of range ({len(self)})")
        r = int(np.searchsorted(self.starts, k, side="right")) - 1
        if self._cached is None or self._cached[0] != r:
            examples = record_examples(self.task, self.model, self.cfg, self.records[r],
                                       self.max_length, BuildStats(), self.ae_ratio)
            if len(examples) != self.starts[r + 1] - self.starts[r]:
                raise RuntimeError(f"{self.dataset}: record {r} gave {len(examples)} "
                                   "examples, not the number counted at start: its task's "
                                   "training_examples is not deterministic")
            self._cached = (r, examples)
        return self._cached[1][k - int(self.starts[r])]


def load_records(cfg: ExperimentConfig, dataset: str, split: str) -> PreparedRecords:
    """The prepared records of ``dataset``'s ``split``, memory-mapped
    (:class:`icae.data.prepared.PreparedRecords`); a missing set, one prepared by an older
    version, or an empty split is an error naming it."""
    from icae.data.prepared import read_records

    path = tasks.by_dataset(dataset).prepared_file(cfg, split)
    records = read_records(path)
    if not len(records):
        raise ValueError(f"{path} holds no examples")
    return records
