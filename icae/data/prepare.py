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

from icae.config import DATA_SETS, ExperimentConfig
from icae.data.io import DataError, SkipLog, relax_permissions, write_jsonl
from icae.utils import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


def configured_sets(cfg: ExperimentConfig) -> list[str]:
    d = cfg.data
    have = {
        "pretrain": bool(d.pretrain.sources),
        "squad": bool(d.squad.train_file or d.squad.eval_file or d.squad.hf_dataset),
        "repoqa": bool(d.repoqa.release_file or d.repoqa.train_tasks_file
                       or d.repoqa.source_dirs),
        "trajectories": bool(d.trajectories.train_file or d.trajectories.eval_file),
    }
    return [name for name in DATA_SETS if name in d.build and have[name]]


def _tokenizer(cfg: ExperimentConfig):
    from icae.models.loading import load_tokenizer, resolve_model_path

    return load_tokenizer(resolve_model_path(cfg.model))


def _build_pretrain(cfg, tok, extra_files: dict):
    from icae.data.corpus import build_pretrain_sets

    documents: list = []
    out = build_pretrain_sets(cfg.data.pretrain, tok(), cfg.seed,
                              skip_bad_lines=cfg.data.skip_bad_lines,
                              progress=cfg.data.progress, train_documents=documents)
    # The training documents' tokens, for fresh spans every pass (icae.training.spans).
    extra_files["documents"] = documents
    return out


def _build_squad(cfg, tok):
    from icae.data.squad import build_squad_sets

    return build_squad_sets(cfg.data.squad, cfg.seed, skip_bad_lines=cfg.data.skip_bad_lines)


def _build_repoqa(cfg, tok):
    r = cfg.data.repoqa
    needs_tok = bool(r.source_dirs) or bool(
        r.release_file and not str(r.release_file).lower().endswith(
            (".jsonl", ".jsonl.gz", ".jsonl.xz")))
    from icae.data.repoqa import build_repoqa_sets

    return build_repoqa_sets(r, tok() if needs_tok else None, cfg.seed,
                             skip_bad_lines=cfg.data.skip_bad_lines)


def _build_trajectories(cfg, tok):
    from icae.data.trajectories import build_trajectory_sets

    return build_trajectory_sets(cfg.data.trajectories, tok(), cfg.seed,
                                 skip_bad_lines=cfg.data.skip_bad_lines)


BUILDERS: dict[str, Callable] = {"pretrain": _build_pretrain, "squad": _build_squad,
                                 "repoqa": _build_repoqa, "trajectories": _build_trajectories}


def prepare_set(cfg: ExperimentConfig, name: str, tokenizer_fn: Callable | None = None) -> dict:
    """Build one data set into ``<prepared_dir>/<name>``; returns its summary."""
    cache: dict = {}

    def tok():
        if "tok" not in cache:
            cache["tok"] = tokenizer_fn() if tokenizer_fn else _tokenizer(cfg)
        return cache["tok"]

    start = time.perf_counter()
    extra: dict = {}
    if name == "pretrain":
        train, eval_set, summary = _build_pretrain(cfg, tok, extra)
    else:
        train, eval_set, summary = BUILDERS[name](cfg, tok)
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
                   **summary, "seed": cfg.seed, "config": section,
                   "tokenizer": getattr(cache.get("tok"), "name_or_path", None),
                   # Sub-10 ms precision: a small set's records/s needs a non-zero time.
                   "seconds": round(time.perf_counter() - start, 4)}
        if "documents" in extra:
            from icae.data.tokens import write_token_documents

            summary["train_documents"] = write_token_documents(
                tmp / "train_documents", extra["documents"])
        atomic_write_json(tmp / "summary.json", summary)
        relax_permissions(tmp)
    return summary


def _describe(name: str, s: dict) -> str:
    files = ", ".join(f"{k}: {v}" for k, v in s["files"].items())
    extra = ""
    if name == "pretrain":
        extra = (f"; documents read {s['documents_read']}, used {s['documents_used']}, "
                 f"skipped {s['documents_skipped']['train_sources']['total']}"
                 f"+{s['documents_skipped']['eval_sources']['total']}; train tokens "
                 f"{s['train']['tokens']} (ae {s['train']['ae']}, lm {s['train']['lm']})")
    elif name == "trajectories":
        extra = "; " + ", ".join(
            f"{k}: {v['turns']} turns, {v['compressed_messages']} compressed, "
            f"{v['cut']['messages_truncated']} messages truncated"
            for k, v in s.items() if isinstance(v, dict) and "turns" in v)
    return f"{name}: {files}{extra}"


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
            "sets has inputs configured (data.pretrain.sources, data.squad.train_file/"
            "eval_file/hf_dataset, data.repoqa.release_file/train_tasks_file/source_dirs, "
            "data.trajectories.train_file/eval_file)")
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
