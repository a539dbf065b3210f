"""``pretrain`` and ``finetune`` commands.

Each checkpoint records ``trained_markers``: the learned markers that occur in its training
examples, plus (fine-tuning) those its ``init_checkpoint`` had trained. Evaluation uses it
to keep untrained marker embeddings out of prompts (:mod:`icae.models.task_prompts`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from icae.config import ExperimentConfig, TrainingConfig, dump_config
from icae.models import build_model
from icae import tasks
from icae.training.examples import LazyExamples, load_records, markers_in
from icae.training.resume import ResumePolicy, tracked_config
from icae.training.trainer import train
from icae.utils import seed_everything

log = logging.getLogger(__name__)


def _dirs(cfg: ExperimentConfig, t: TrainingConfig, default_name: str) -> tuple[Path, Path]:
    out = Path(t.output_dir) if t.output_dir else cfg.run_dir / default_name
    resume = Path(t.resume_dir) if t.resume_dir else out.with_name(out.name + ".resume")
    return out, resume


def _policy(cfg: ExperimentConfig, stage: str, model, args) -> ResumePolicy:
    return ResumePolicy(run_config=tracked_config(cfg, stage, model),
                        resume_from=getattr(args, "resume_from", None),
                        fresh=bool(getattr(args, "fresh", False)), stage=stage)


def _examples(cfg: ExperimentConfig, dataset: str, split: str, t: TrainingConfig, model
              ) -> LazyExamples:
    return LazyExamples(model, cfg, dataset, load_records(cfg, dataset, split), t.max_length,
                        training=split == "train")


def _build(cfg: ExperimentConfig, dataset: str, t: TrainingConfig, model):
    train_set = _examples(cfg, dataset, "train", t, model)
    stats = train_set.stats
    log.info("%s train: %d examples (%d truncated, %d skipped %s)%s", dataset, stats.examples,
             stats.truncated, stats.skipped, stats.reasons or "",
             f"; {stats.autoencoding} of them autoencoding (finetune.ae_ratio)"
             if stats.autoencoding else "")
    if not len(train_set):
        raise ValueError(f"no usable {dataset} training examples (skipped: {stats.reasons})")
    eval_set = _examples(cfg, dataset, "eval", t, model) if t.eval_steps else []
    return train_set, eval_set, stats


def _fresh_spans(cfg: ExperimentConfig, t: TrainingConfig, model):
    """Training examples drawn afresh each pass from the prepared documents."""
    import math
    import os

    from icae.data.prepared import TokenDocuments
    from icae.training.examples import BuildStats, pretrain_pieces
    from icae.training.spans import PretrainSpans, task_id

    docs = TokenDocuments(tasks.by_dataset("pretrain").prepared_file(cfg, "train"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * world
    if t.max_steps > 0:
        n = t.max_steps * per_step
    else:
        n = math.ceil(t.num_train_epochs * len(docs))

    def encode(task, ctx, cont, prompt):
        pieces, _ = pretrain_pieces(model, {"task": task, "context_ids": ctx,
                                            "continuation_ids": cont, "prompt_ids": prompt})
        return model.encode(pieces, task=task_id(task))

    train_set = PretrainSpans(docs, cfg.data.pretrain, cfg.seed, n, encode)
    log.info("pretrain train: %d examples drawn from %d documents (%d passes)", n,
             len(train_set.usable), math.ceil(n / len(train_set.usable)))
    eval_set = _examples(cfg, "pretrain", "eval", t, model) if t.eval_steps else []
    stats = BuildStats(examples=n)
    return train_set, eval_set, stats


def span_history(meta: dict) -> list[dict]:
    """The pre-training spans a checkpoint's parameters have seen, one entry per run of its
    lineage (``seed``, ``examples``, the pre-training ``sources`` and ``prepared_dir``):
    those of the runs it continued (``span_history`` in its checkpoint.json, written by
    :func:`pretrain`) and its own (from its ``run_config`` and ``examples_seen``)."""
    history = list(meta.get("span_history") or [])
    run = meta.get("run_config") or {}
    seen = int(meta.get("examples_seen") or 0)
    if run and seen and meta.get("stage", "pretrain") == "pretrain":
        data = run.get("data") or {}
        history.append({"seed": run.get("seed"), "examples": seen,
                        "sources": (data.get("pretrain") or {}).get("sources") or [],
                        "prepared_dir": data.get("prepared_dir")})
    return history


def revisited_spans(meta: dict, cfg: ExperimentConfig) -> str | None:
    """Why a run from ``pretrain.init_checkpoint`` (checkpoint.json ``meta``) would train on
    spans that checkpoint (or a run it continued) saw, or None. A run's example index
    starts at 0 and a span is a pure function of (seed, index) over the same documents, so
    the same seed and data replay that run's first ``examples`` spans."""
    import dataclasses

    mine = dataclasses.asdict(cfg.data.pretrain)["sources"]
    for run in span_history(meta):
        sources = run.get("sources") or []
        same_data = (sources == mine) if (sources or mine) else (
            run.get("prepared_dir") == cfg.data.prepared_dir)
        if run.get("seed") == cfg.seed and same_data:
            return (f"pretrain.init_checkpoint={cfg.pretrain.init_checkpoint} was trained on "
                    f"{run['examples']} examples drawn with seed {cfg.seed} from the same "
                    f"pre-training data (its span_history); this run counts its examples from "
                    f"0 and so draws the same spans again (a span is a pure function of seed "
                    f"and example index). Set another seed to draw new ones.")
    return None


def pretrain(cfg: ExperimentConfig, args=None) -> dict:
    if cfg.model.model_type != "icae":
        raise ValueError("model.model_type: pretrain trains ICAE; the llm baseline is only "
                         "fine-tuned")
    seed_everything(cfg.seed)
    t = cfg.pretrain
    parent = _check_init(cfg, t, "pretrain")
    model = build_model(cfg.model, checkpoint=t.init_checkpoint)
    if t.init_checkpoint and t.max_steps == 0:
        return _adopt(cfg, t, model)
    history = span_history(parent) if parent else []
    warning = revisited_spans(parent, cfg) if parent else None
    if warning:
        log.warning(warning)
    train_set, eval_set, stats = _fresh_spans(cfg, t, model)
    # The spans dataset holds every pass: one epoch of the Trainer covers them all.
    import dataclasses

    t = dataclasses.replace(t, num_train_epochs=1.0)
    ae_contexts = []
    if t.eval_steps and t.ae_bleu_samples:
        from icae.data.io import seeded_subset

        records = [r for r in load_records(cfg, "pretrain", "eval") if r["task"] == "ae"]
        ae_contexts = [r["context_ids"]
                       for r in seeded_subset(records, t.ae_bleu_samples, cfg.seed)]
    # Fresh spans are encoded when read: one example per objective shows their markers.
    marker_examples = train_set.representatives()
    out, resume = _dirs(cfg, t, "pretrain")
    with _tracked(cfg, "pretrain", resume):
        return train(model, train_set, eval_set, t, output_dir=out, resume_dir=resume,
                     seed=cfg.seed, config_text=dump_config(cfg), ae_contexts=ae_contexts,
                     extra_meta={"stage": "pretrain", "examples": stats.examples,
                                 "trained_markers": markers_in(model, marker_examples),
                                 "span_history": history},
                     resume_policy=_policy(cfg, "pretrain", model, args))


def finetune(cfg: ExperimentConfig, args=None) -> dict:
    seed_everything(cfg.seed)
    t = cfg.finetune
    if cfg.model.model_type == "llm" and t.init_checkpoint:
        log.info("llm baseline: starting from %s", t.init_checkpoint)
    _check_init(cfg, t, "finetune")
    model = build_model(cfg.model, checkpoint=t.init_checkpoint)
    if t.freeze_encoder and cfg.model.model_type == "icae":
        log.info("finetune.freeze_encoder: %d parameters of the encoder and memory slots "
                 "stay as they are", model.freeze_encoder())
    if t.freeze_decoder and cfg.model.model_type == "icae":
        log.info("finetune.freeze_decoder: %d parameters of the decoder adapter stay as they "
                 "are", model.freeze_decoder())
    train_set, eval_set, stats = _build(cfg, t.dataset, t, model)
    out, resume = _dirs(cfg, t, f"finetune-{t.dataset}-{cfg.model.model_type}")
    markers = set(train_set.markers)
    if t.init_checkpoint and cfg.model.model_type == "icae":
        from icae.models.checkpoint import read_meta, trained_markers

        markers |= trained_markers(read_meta(t.init_checkpoint), t.init_checkpoint)
    with _tracked(cfg, "finetune", resume):
        return train(model, train_set, eval_set, t, output_dir=out, resume_dir=resume,
                     seed=cfg.seed, config_text=dump_config(cfg),
                     extra_meta={"stage": "finetune", "dataset": t.dataset,
                                 "init_checkpoint": t.init_checkpoint,
                                 "examples": stats.examples,
                                 "trained_markers": sorted(markers)},
                     resume_policy=_policy(cfg, "finetune", model, args))


def _check_init(cfg: ExperimentConfig, t: TrainingConfig, stage: str) -> dict | None:
    """``<stage>.init_checkpoint`` exists and was trained with this config's model.*; its
    checkpoint.json (None without an init_checkpoint)."""
    if not t.init_checkpoint:
        return None
    if not Path(t.init_checkpoint).is_dir():
        raise FileNotFoundError(f"{stage}.init_checkpoint={t.init_checkpoint!r} does not exist")
    from icae.models.checkpoint import check_settings, read_meta

    meta = read_meta(t.init_checkpoint)
    check_settings(meta, cfg.model, t.init_checkpoint)
    return meta


def _adopt(cfg: ExperimentConfig, t: TrainingConfig, model) -> dict:
    """pretrain with max_steps 0: the (already loaded and checked) init_checkpoint becomes
    this run's pre-trained checkpoint, with its own training record kept."""
    from icae.models.checkpoint import read_meta, save_checkpoint

    origin = read_meta(t.init_checkpoint)
    keep = ("global_step", "examples_seen", "train_runtime_s", "train_samples_per_second",
            "gpu", "trained_markers", "run_config")
    meta = {k: origin[k] for k in keep if k in origin}
    meta.update(stage="pretrain", adopted_from=str(t.init_checkpoint), examples=0)
    out, _ = _dirs(cfg, t, "pretrain")
    # Its training log travels with it (every pretrain output has a log.csv).
    logs = {name: (Path(t.init_checkpoint) / name).read_text(encoding="utf-8")
            for name in ("log.csv", "log.jsonl") if (Path(t.init_checkpoint) / name).is_file()}
    logs.setdefault("log.csv", "step\n")
    save_checkpoint(model, out, config_text=dump_config(cfg), extra=meta, extra_files=logs)
    log.info("pretrain: adopted %s as %s (trained %s steps, %s examples, elsewhere); no "
             "training here (pretrain.max_steps=0)", t.init_checkpoint, out,
             origin.get("global_step"), origin.get("examples_seen"))
    return meta


@contextmanager
def _tracked(cfg: ExperimentConfig, stage: str, resume: Path):
    """The job's wandb run (icae.training.tracking) around training, when asked for."""
    from icae.training.tracking import start_run

    run = start_run(cfg, stage, resume)
    try:
        yield run
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)  # marked failed; a retried job resumes the same run
        raise
    if run is not None:
        run.finish()
