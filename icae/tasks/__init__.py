"""The benchmarks, one module each, and the registry every step loops over.

``TASKS`` maps ``evaluation.task`` to its :class:`~icae.tasks.base.Task`, in the order of
the tables (pre-training data first). Data preparation, example encoding, evaluation,
aggregation, the config's choices and the workflow read it instead of naming tasks.
Adding a benchmark: docs/developer/adding-a-benchmark.md.
"""

from __future__ import annotations

from icae.tasks import autoencoding, repoqa, squad, trajectories
from icae.tasks.base import Example, PreparedData, Task, TaskContext

__all__ = ["TASKS", "Example", "PreparedData", "Task", "TaskContext", "by_dataset",
           "dataset_of_task", "datasets", "finetune_datasets", "get", "headline_metrics",
           "percent_metrics", "task_of_dataset", "title"]

TASKS: dict[str, Task] = {t.name: t for t in (autoencoding.TASK, squad.TASK, repoqa.TASK,
                                               trajectories.TASK)}


def get(name: str) -> Task:
    """The task named ``name``; ValueError naming the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of "
                         f"{', '.join(TASKS)}") from None


def by_dataset(dataset: str) -> Task:
    """The task whose data set is ``dataset``; ValueError naming the known ones."""
    for task in TASKS.values():
        if task.dataset == dataset:
            return task
    raise ValueError(f"unknown data set {dataset!r}; expected one of {', '.join(datasets())}")


def datasets() -> tuple[str, ...]:
    """Every data set prepare-data can build, in table order."""
    return tuple(t.dataset for t in TASKS.values())


def finetune_datasets() -> tuple[str, ...]:
    return tuple(t.dataset for t in TASKS.values() if t.finetunable)


def dataset_of_task() -> dict[str, str]:
    return {t.name: t.dataset for t in TASKS.values()}


def task_of_dataset() -> dict[str, str]:
    """Fine-tuning data set -> the task that evaluates it."""
    return {t.dataset: t.name for t in TASKS.values() if t.finetunable}


def headline_metrics() -> dict[str, list[str]]:
    """Task -> the metrics of its paper table and plots (metrics_long.csv keeps all)."""
    return {t.name: list(t.headline) for t in TASKS.values()}


def percent_metrics() -> set[tuple[str, str]]:
    """``(task, metric)`` pairs written in percent by ``icae evaluate``."""
    return {(t.name, m) for t in TASKS.values() for m in t.percent}


def title(name: str) -> str:
    """A task's name in tables and plots (the name itself for an unknown task)."""
    task = TASKS.get(name)
    return task.title if task else name
