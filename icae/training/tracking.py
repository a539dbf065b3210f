"""Weights & Biases for training runs (``pretrain.report_to: [wandb]`` / ``finetune...``).

wandb stays optional (``pip install -e '.[wandb]'``); asking for it without it installed
fails before any training with the key named. The run is started here, before the
Trainer, so that the Trainer's WandbCallback logs into it (it starts its own run only
when none is active):

* mode: ``WANDB_MODE`` when set; otherwise ``offline`` unless ``WANDB_API_KEY`` is set
  (runs land in ``WANDB_DIR``, default ``<output_root>/<run_name>/wandb``; upload them
  later with ``wandb sync``);
* name, group, job type and tags: from the workflow (``ICAE_WANDB_NAME``,
  ``ICAE_WANDB_GROUP``, ``ICAE_WANDB_JOB_TYPE``, ``ICAE_WANDB_TAGS``: branch, stage, data
  set, model type), else made from the config the same way;
* a resumed job continues its run: the run id is kept in the job's resume folder
  (``wandb_run_id``), which outlives a failure and is removed after success, so a
  retried job resumes its run and a fresh job (or a changed config, which gets a new
  resume folder) starts a new one;
* the run config holds the ICAE settings (memory size, layout, rate, ...) under
  ``icae`` and the whole resolved experiment config under ``experiment``.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

ID_FILE = "wandb_run_id"


def wants_wandb(report_to) -> bool:
    return "wandb" in list(report_to or [])


def wandb_mode(environ=None) -> str:
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def run_id(resume_dir: Path) -> tuple[str, bool]:
    """The run id kept in ``resume_dir`` (and whether it was there already)."""
    path = Path(resume_dir) / ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), True
    path.parent.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex[:16]
    path.write_text(new + "\n")
    return new, False


def run_identity(cfg, stage: str) -> dict:
    """Name, group, job type and tags: the workflow's, else made from the config."""
    m = cfg.model
    if stage == "pretrain":
        job = "pretrain"
    else:
        job = f"finetune-{cfg.finetune.dataset}-{m.model_type}"
    if m.model_type == "icae":
        branch = (f"m{m.mem_size}-r{m.mean_compression_rate:g}-{m.position_layout}"
                  f"-s{cfg.seed}")
    else:
        branch = f"llm-s{cfg.seed}"
    tags = [job, m.model_type, branch]
    if stage != "pretrain":
        tags.append(cfg.finetune.dataset)
    env = os.environ
    return {
        "name": env.get("ICAE_WANDB_NAME") or f"{cfg.run_name}/{branch}/{job}",
        "group": env.get("ICAE_WANDB_GROUP") or f"{cfg.run_name}/{branch}",
        "job_type": env.get("ICAE_WANDB_JOB_TYPE") or job.split("-", 1)[0],
        "tags": [t for t in env.get("ICAE_WANDB_TAGS", "").split(",") if t] or tags,
    }


def run_config(cfg, stage: str) -> dict:
    from icae.config import to_dict

    m = cfg.model
    icae = {"model_type": m.model_type, "base_model": m.base_model, "stage": stage,
            "seed": cfg.seed, "lora_r": m.lora_r, "lora_alpha": m.lora_alpha,
            "train_decoder": m.train_decoder}
    if m.model_type == "icae":
        icae.update(mem_size=m.mem_size, position_layout=m.position_layout,
                    mean_compression_rate=m.mean_compression_rate,
                    min_compress_len=m.min_compress_len)
    if stage != "pretrain":
        icae.update(dataset=cfg.finetune.dataset, init_checkpoint=cfg.finetune.init_checkpoint)
    experiment = to_dict(cfg)
    experiment.pop("workflow", None)
    return {"icae": icae, "experiment": experiment}


def start_run(cfg, stage: str, resume_dir: Path):
    """Start (or resume) the wandb run of a training job; None when not asked for or on
    a process other than rank 0."""
    t = cfg.pretrain if stage == "pretrain" else cfg.finetune
    if not wants_wandb(t.report_to):
        return None
    try:
        import wandb
    except ImportError:
        raise ValueError(f"{stage}.report_to: wandb is not installed "
                         "(pip install -e '.[wandb]', or drop wandb from report_to)") from None
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    mode = wandb_mode()
    rid, resumed = run_id(resume_dir)
    directory = Path(os.environ.get("WANDB_DIR") or Path(cfg.output_root) / cfg.run_name
                     / "wandb")
    directory.mkdir(parents=True, exist_ok=True)
    ident = run_identity(cfg, stage)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "icae"), id=rid,
                     resume="allow", mode=mode, dir=str(directory),
                     config=run_config(cfg, stage), **ident)
    log.info("wandb %s run %s (%s, id %s%s) in %s", mode, ident["name"], ident["group"],
             rid, ", resumed" if resumed else "", directory)
    return run

