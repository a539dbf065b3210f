"""``icae prepare-data``: build every configured data set under ``data.prepared_dir``.

=============  ==============================================  ==========================
set            built when                                      files
=============  ==============================================  ==========================
pretrain       ``data.pretrain.sources``                       train.arrow (documents),
                                                               eval.arrow
squad          ``data.squad.train_file/eval_file/hf_dataset``  train.arrow, eval.arrow
repoqa         ``data.repoqa.release_file/train_tasks_file/     train.arrow, eval.arrow
               source_dirs``
trajectories   ``data.trajectories.train_file/eval_file``      train.arrow, eval.arrow
=============  ==============================================  ==========================

The splits are Arrow IPC files, memory-mapped by their readers (:mod:`icae.data.prepared`).
``data.build`` limits the run to some sets. Each set's folder gets a ``summary.json``
(its files and row counts, skips, cuts, the config section used, the time taken and, for
a set it tokenizes, tokens/s) and is replaced atomically: a failed run leaves the
previous output in place. Both splits are always written; a split that is not configured
(e.g. no ``eval_file``) is empty, with a warning and ``"empty_splits"`` in the summary.
Tokenization uses the tokenizer of the prepared base model, in ``data.num_proc``
processes for the pre-training documents.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

from icae import tasks
from icae.config import ExperimentConfig
from icae.data.io import DataError, relax_permissions
from icae.utils import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


def configured_sets(cfg: ExperimentConfig) -> list[str]:
    return [t.dataset for t in tasks.TASKS.values()
            if t.dataset in cfg.data.build and t.configured(cfg.data)]


def _tokenizer(cfg: ExperimentConfig):
    from icae.models.loading import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(cfg.model))


def prepare_set(cfg: ExperimentConfig, name: str, tokenizer_fn: Callable | None = None) -> dict:
    """Build one data set into ``<prepared_dir>/<name>``; returns its summary."""
    from icae.data.prepared import split_filename

    cache: dict = {}

    def tok():
        if "tok" not in cache:
            cache["tok"] = tokenizer_fn() if tokenizer_fn else _tokenizer(cfg)
        return cache["tok"]

    start = time.perf_counter()
    out = Path(cfg.data.prepared_dir) / name
    section = dataclasses.asdict(getattr(cfg.data, name))
    with atomic_directory(out) as tmp:
        rows, built = tasks.by_dataset(name).write_prepared(cfg, tok, tmp)
        empty = [split for split, n in rows.items() if not n]
        for split in empty:
            log.warning("prepare-data: %s/%s is empty: that split is not configured",
                        name, split_filename(split))
        seconds = time.perf_counter() - start
        summary = {"set": name,
                   "files": {split_filename(k): v for k, v in rows.items()},
                   "empty_splits": empty,
                   **built, "seed": cfg.seed, "config": section,
                   "tokenizer": getattr(cache.get("tok"), "name_or_path", None),
                   # Sub-10 ms precision: a small set's records/s needs a non-zero time.
                   "seconds": round(seconds, 4)}
        if "tokenized_tokens" in built:
            summary["num_proc"] = cfg.data.num_proc
            summary["tokens_per_s"] = round(built["tokenized_tokens"] / max(seconds, 1e-9))
        atomic_write_json(tmp / "summary.json", summary)
        relax_permissions(tmp)
    return summary


def _describe(name: str, s: dict) -> str:
    files = ", ".join(f"{k}: {v}" for k, v in s["files"].items())
    return f"{name}: {files}{tasks.by_dataset(name).describe_prepared(s)}"


def _timing(s: dict) -> str:
    from icae.progress import fmt_duration

    rows = sum(v for v in s["files"].values() if isinstance(v, int))
    seconds = float(s.get("seconds") or 0.0)
    rate = f", {rows / seconds:.3g} records/s" if seconds > 0 else ""
    if "tokens_per_s" in s:
        rate += (f", {s['tokenized_tokens']} tokens tokenized at {s['tokens_per_s']:.3g} "
                 f"tokens/s with {s['num_proc']} process(es)")
    return f" (elapsed {fmt_duration(seconds)}{rate})"


def run(cfg: ExperimentConfig, args=None) -> dict:
    names = configured_sets(cfg)
    if not names:
        raise DataError(
            f"prepare-data: nothing to build: data.build={cfg.data.build} but none of these "
            "sets has inputs configured ("
            + ", ".join(f"data.{t.dataset}.{t.data_inputs}" for t in tasks.TASKS.values())
            + ")")
    skipped = [n for n in cfg.data.build if n not in names]
    if skipped:
        log.info("prepare-data: no inputs configured for %s; not built", ", ".join(skipped))
    cache: dict = {}

    def tok():
        if "tok" not in cache:
            cache["tok"] = _tokenizer(cfg)
        return cache["tok"]

    summaries = {}
    for name in names:
        log.info("prepare-data: building %s", name)
        summaries[name] = prepare_set(cfg, name, tok)
        line = _describe(name, summaries[name]) + _timing(summaries[name])
        log.info("prepare-data: %s", line)
        print(line, flush=True)
    print(f"prepared data in {cfg.data.prepared_dir}", flush=True)
    return summaries
