"""``icae prepare-data``: build every configured data set under ``data.prepared_dir``.

=============  ==============================================  ==========================
set            built when                                      files
=============  ==============================================  ==========================
pretrain       ``data.pretrain.sources``                       train.jsonl, eval.jsonl
squad          ``data.squad.train_file/eval_file/hf_dataset``  train.jsonl, eval.jsonl
repoqa         ``data.repoqa.release_file/train_tasks_file/     train.jsonl, eval.jsonl
               source_dirs``
trajectories   ``data.trajectories.train_file/eval_file``      train.jsonl, eval.jsonl
=============  ==============================================  ==========================

``data.build`` limits the run to some sets. Each set's folder gets a ``summary.json``
(counts, skips, cuts, the config section used) and is replaced atomically: a failed run
leaves the previous output in place. Both ``train.jsonl`` and ``eval.jsonl`` are always
written; a split that is not configured (e.g. no ``eval_file``) is empty, with a warning and
``"empty_splits"`` in the summary. Tokenization uses the tokenizer of the prepared base model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

from icae import tasks
from icae.config import ExperimentConfig
from icae.data.io import DataError, relax_permissions, write_jsonl
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
    cache: dict = {}

    def tok():
        if "tok" not in cache:
            cache["tok"] = tokenizer_fn() if tokenizer_fn else _tokenizer(cfg)
        return cache["tok"]

    start = time.perf_counter()
    prepared = tasks.by_dataset(name).prepare(cfg, tok)
    train, eval_set = prepared.train, prepared.eval
    out = Path(cfg.data.prepared_dir) / name
    section = dataclasses.asdict(getattr(cfg.data, name))
    with atomic_directory(out) as tmp:
        files, empty = {}, []
        for split, rows in (("train", train), ("eval", eval_set)):
            files[split] = write_jsonl(tmp / f"{split}.jsonl", rows)
            if not rows:
                empty.append(split)
                log.warning("prepare-data: %s/%s.jsonl is empty: that split is not configured",
                            name, split)
        summary = {"set": name, "files": {f"{k}.jsonl": v for k, v in files.items()},
                   "empty_splits": empty,
                   **prepared.summary, "seed": cfg.seed, "config": section,
                   "tokenizer": getattr(cache.get("tok"), "name_or_path", None),
                   # Sub-10 ms precision: a small set's records/s needs a non-zero time.
                   "seconds": round(time.perf_counter() - start, 4)}
        if prepared.write_extra is not None:
            summary.update(prepared.write_extra(tmp))
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
