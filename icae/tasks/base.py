"""What a benchmark is to the rest of the toolkit: :class:`Task`.

A task names its data set (the folder ``<data.prepared_dir>/<dataset>/`` and the config
section ``data.<dataset>``), builds that data set (delegating to :mod:`icae.data`), turns
its prepared records into training examples and evaluation examples with the one prompt
function per task of :mod:`icae.models.task_prompts`, scores a prediction, and says which
metrics it reports, in which unit, and which of them are its headline.

This module and the task modules import nothing of the toolkit at import time (the
config reads the registry while it is being imported); the model, data and evaluation
code they drive is imported inside the methods that use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from icae.config import EvaluationConfig, ExperimentConfig
    from icae.models.base import EncodedPrompt
    from icae.models.task_prompts import PromptRule
    from icae.models.templates import Piece
    from icae.training.examples import BuildStats

# Units of the metrics that several tasks report.
SHARED_UNITS = {
    "bleu1": "fraction [0,1], NLTK sentence BLEU-1 with offline word tokenisation",
    "token_accuracy": "fraction of reference tokens predicted at the same position",
}


@dataclass
class Example:
    """One evaluation example: a generation prompt, its reference and its token budget."""

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
    """What building evaluation examples needs besides the rows."""

    cfg: Any             # ExperimentConfig
    prompts: Any         # PromptBuilder
    policy: Any          # icae.evaluation.policy.ContextPolicy
    stop_ids: list[int]
    # Data a task reads once per evaluation (Task.evaluation_data), e.g. RepoQA's needles.
    data: Any = None
    # markers the evaluated checkpoint trained (None: no restriction, e.g. no checkpoint)
    trained_markers: frozenset[str] | None = None

    @property
    def rule(self) -> PromptRule:
        """The prompt rule shared with training: the policy's (= ICAE's) compression
        decision and the checkpoint's trained markers."""
        from icae.models.task_prompts import PromptRule

        return PromptRule(self.policy.compresses, self.trained_markers)

    def finish(self, ex: Example) -> Example:
        """``ex`` as the evaluated model sees it: the baseline's edits of its contexts."""
        ex.prompt = self.policy.apply(ex.prompt)
        if ex.teacher_forced is not None:
            ex.teacher_forced = self.policy.apply(ex.teacher_forced)
        return ex


@dataclass
class PreparedData:
    """What a task's data preparation hands to ``prepare-data``."""

    train: list[dict]
    eval: list[dict]
    summary: dict


@dataclass(frozen=True)
class Task:
    """One benchmark. Subclasses implement the methods that raise NotImplementedError."""

    # evaluation.task; the folder eval/<variant>/<name> of the workflow
    name: str
    # the data set: <data.prepared_dir>/<dataset>/ and the config section data.<dataset>
    dataset: str
    # in tables and plots: the task, its caption, and the data set
    title: str
    caption: str
    dataset_title: str
    # the config keys of data.<dataset> whose presence builds the set (for messages)
    data_inputs: str
    # fields every record of the prepared eval split must have
    eval_fields: tuple[str, ...]
    # per-example metrics, in report order (the run adds token and timing metrics)
    metrics: tuple[str, ...]
    # the metrics of the paper tables and plots; the first is the summary table's
    headline: tuple[str, ...]
    # metric (or "prefix_*" pattern) -> its unit, for summary.json
    units: dict[str, str]
    # metrics written in percent (the others are fractions, losses or counts)
    percent: frozenset[str] = frozenset()
    # a fine-tuning data set (finetune.dataset, workflow.finetune_datasets)
    finetunable: bool = True
    # the generation budget is a setting (evaluation.max_new_tokens[_by_task]); otherwise
    # the examples set their own (reference length + 1)
    budgeted: bool = False
    # a default budget that takes precedence over evaluation.max_new_tokens
    default_max_new_tokens: int | None = None
    # also scored teacher-forced (Example.teacher_forced)
    teacher_forced: bool = False
    # examples are turns of one conversation (evaluation.incremental_turns applies)
    turns: bool = False
    # said when the eval file yields no example
    no_examples_hint: str = ""

    # -- data ------------------------------------------------------------------------------

    def configured(self, data_cfg) -> bool:
        """Whether ``data.<dataset>`` names any input (prepare-data builds the set)."""
        raise NotImplementedError

    def prepare(self, cfg: ExperimentConfig, tokenizer: Callable[[], Any]) -> PreparedData:
        """Build the train and eval records; ``tokenizer()`` loads the prepared base
        model's tokenizer (call it only when needed)."""
        raise NotImplementedError

    def write_prepared(self, cfg: ExperimentConfig, tokenizer: Callable[[], Any],
                       folder: Path) -> tuple[dict[str, int], dict]:
        """Write the set's splits into ``folder`` (:func:`icae.data.prepared.split_path`);
        returns ``({split: rows}, summary entries)``. By default the records of
        :meth:`prepare`; a task whose set is too large to hold (pre-training) streams its
        own."""
        from icae.data.prepared import split_path, write_records

        prepared = self.prepare(cfg, tokenizer)
        files = {split: write_records(split_path(folder, split), rows)
                 for split, rows in (("train", prepared.train), ("eval", prepared.eval))}
        return files, dict(prepared.summary)

    def describe_prepared(self, summary: dict) -> str:
        """More of prepare-data's line about the built set (after the file counts)."""
        return ""

    def prepared_file(self, cfg: ExperimentConfig, split: str) -> Path:
        from icae.data.prepared import split_path

        return split_path(Path(cfg.data.prepared_dir) / self.dataset, split)

    # -- training --------------------------------------------------------------------------

    def training_examples(self, model, cfg: ExperimentConfig, record: dict, max_length: int,
                          stats: BuildStats) -> list[EncodedPrompt]:
        """The encoded training examples of one prepared record (none, one or several),
        each within ``max_length``; skips and cuts are counted in ``stats``."""
        raise NotImplementedError

    # -- evaluation ------------------------------------------------------------------------

    def max_new_tokens(self, e: EvaluationConfig) -> int | None:
        """The generation budget of a budgeted task: ``evaluation.max_new_tokens_by_task``,
        else the task's default, else ``evaluation.max_new_tokens``; None for a task whose
        examples set their own."""
        if not self.budgeted:
            return None
        if self.name in e.max_new_tokens_by_task:
            return e.max_new_tokens_by_task[self.name]
        if self.default_max_new_tokens is not None:
            return self.default_max_new_tokens
        return e.max_new_tokens

    def evaluation_data(self, cfg: ExperimentConfig, path: Path) -> Any:
        """Data read once per evaluation from the whole eval file (TaskContext.data)."""
        return None

    def build_examples(self, rows: list[dict], ctx: TaskContext) -> list[Example]:
        raise NotImplementedError

    def score(self, ex: Example, prediction: str, pred_ids: list[int]) -> dict[str, float]:
        """Per-example metrics (fractions in [0, 1]; the run scales the percent ones)."""
        raise NotImplementedError

    def breakdowns(self, records: list[dict], means: Callable[..., list[tuple]]
                   ) -> list[tuple]:
        """Metric rows ``(name, value, n)`` after the means over all examples, e.g. by
        position or turn; ``means(names, records, suffix)`` gives the rows of the means of
        ``names`` over some records, named ``<name><suffix>``."""
        return []
