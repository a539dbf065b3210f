"""``pretrain`` and ``finetune`` commands."""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from pathlib import Path

from icae.config import ExperimentConfig, TrainingConfig, dump_config
from icae.models import build_model
from icae.training.examples import encode_records, load_records
from icae.training.trainer import train
from icae.utils import seed_everything

log = logging.getLogger(__name__)


def _dirs(cfg: ExperimentConfig, t: TrainingConfig, default_name: str) -> tuple[Path, Path]:
    out = Path(t.output_dir) if t.output_dir else cfg.run_dir / default_name
    resume = Path(t.resume_dir) if t.resume_dir else out.with_name(out.name + ".resume")
    return out, resume


def _build(cfg: ExperimentConfig, dataset: str, t: TrainingConfig, model):
    train_records = load_records(cfg, dataset, "train")
    train_set, stats = encode_records(model, cfg, dataset, train_records, t.max_length)
    log.info("%s train: %d examples (%d truncated, %d skipped %s)", dataset, stats.examples,
             stats.truncated, stats.skipped, stats.reasons or "")
    if not train_set:
        raise ValueError(f"no usable {dataset} training examples (skipped: {stats.reasons})")
    eval_set = []
    if t.eval_steps:
        eval_records = load_records(cfg, dataset, "eval")
        eval_set, _ = encode_records(model, cfg, dataset, eval_records, t.max_length)
    return train_set, eval_set, stats


def pretrain(cfg: ExperimentConfig, args=None) -> dict:
    if cfg.model.model_type != "icae":
        raise ValueError("model.model_type: pretrain trains ICAE; the llm baseline is only "
                         "fine-tuned")
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    t = cfg.pretrain
    train_set, eval_set, stats = _build(cfg, "pretrain", t, model)
    ae_contexts = []
    if t.eval_steps and t.ae_bleu_samples:
        records = [r for r in load_records(cfg, "pretrain", "eval") if r["task"] == "ae"]
        rng = random.Random(cfg.seed)
        ae_contexts = [r["context_ids"] for r in
                       rng.sample(records, min(t.ae_bleu_samples, len(records)))]
    out, resume = _dirs(cfg, t, "pretrain")
    with _tracked(cfg, "pretrain", resume):
        return train(model, train_set, eval_set, t, output_dir=out, resume_dir=resume,
                     seed=cfg.seed, config_text=dump_config(cfg), ae_contexts=ae_contexts,
                     extra_meta={"stage": "pretrain", "examples": stats.examples})


def finetune(cfg: ExperimentConfig, args=None) -> dict:
    seed_everything(cfg.seed)
    t = cfg.finetune
    if cfg.model.model_type == "llm" and t.init_checkpoint:
        log.info("llm baseline: starting from %s", t.init_checkpoint)
    if t.init_checkpoint and not Path(t.init_checkpoint).is_dir():
        raise FileNotFoundError(f"finetune.init_checkpoint={t.init_checkpoint!r} does not exist")
    model = build_model(cfg.model, checkpoint=t.init_checkpoint)
    train_set, eval_set, stats = _build(cfg, t.dataset, t, model)
    out, resume = _dirs(cfg, t, f"finetune-{t.dataset}-{cfg.model.model_type}")
    with _tracked(cfg, "finetune", resume):
        return train(model, train_set, eval_set, t, output_dir=out, resume_dir=resume,
                     seed=cfg.seed, config_text=dump_config(cfg),
                     extra_meta={"stage": "finetune", "dataset": t.dataset,
                                 "init_checkpoint": t.init_checkpoint,
                                 "examples": stats.examples})


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
