"""Resuming training safely: complete checkpoints only, the same config only (unless told),
and a checkpoint from before the first non-finite loss or gradient.

Semantics follow the Hugging Face Trainer (``checkpoint-N`` folders in the resume folder,
the newest one resumed), with three guards it lacks:

- **completeness**: a periodic checkpoint gets ``checkpoint-complete.json`` after every
  other file is written (and before older checkpoints are rotated away). A folder without
  it (a kill during the save) is skipped and, when a newer complete one is missing too,
  set aside as ``checkpoint-N.incomplete`` so it can neither be resumed nor confuse
  rotation;
- **same config**: the resume folder records the *tracked* config of the run that made
  it (``run-config.json``). It is derived from the config dataclasses - all of ``model``,
  the stage's training section, the stage's data section, the seed - minus an explicit
  list of settings that cannot change the trained weights (:data:`NOT_TRACKED`), plus the
  base model's fingerprint and the init checkpoint's weights hash. New config fields are
  tracked without touching this module. A rerun with a different tracked config refuses,
  naming the keys; ``--fresh`` starts over, ``--resume-from DIR`` continues a run on
  purpose with changed optimisation settings (:data:`OPTIMISATION_KEYS` only);
- **before non-finite values**: a non-finite loss or gradient stops training before the
  optimizer step, and the state at that moment (all finite) is saved as a complete
  checkpoint with ``nonfinite.json`` beside it, to resume from with lower settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from icae.config import ICAE_ONLY_MODEL_KEYS
from icae.utils import atomic_write_json

log = logging.getLogger(__name__)

COMPLETE = "checkpoint-complete.json"
RUN_FILE = "run-config.json"
NONFINITE = "nonfinite.json"
TRAINER_STATE = "trainer_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")

# Training-section settings that cannot change the trained weights: logging, speed,
# periodic evaluation and where things are written.
NOT_TRACKED = frozenset({
    "report_to", "progress", "logging_steps", "dataloader_num_workers", "compile_layers",
    "loss_chunk_tokens", "cudnn_attention", "save_steps",
    "save_total_limit", "eval_steps", "ae_bleu_samples", "per_device_eval_batch_size",
    "output_dir", "resume_dir",
    # A wall-clock stop and a loss diagnostic: neither changes what a step computes.
    "max_train_seconds", "separation_warning_examples",
})
# What ``--resume-from`` may change: the optimizer's hyperparameters and the schedule.
OPTIMISATION_KEYS = frozenset({"learning_rate", "embedding_learning_rate", "weight_decay", "max_grad_norm",
                               "warmup_steps", "lr_scheduler_type", "max_steps",
                               "num_train_epochs"})


class ResumeError(ValueError):
    """A resume that would mislabel weights; the message says how to proceed."""


# ---------------------------------------------------------------------------------------
# Complete checkpoints


def _required_files() -> tuple[str, ...]:
    from icae.models.checkpoint import META, WEIGHTS

    return (WEIGHTS, META, TRAINER_STATE)


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / COMPLETE).is_file() and all((folder / f).is_file()
                                                 for f in _required_files())


def mark_complete(folder: str | os.PathLike, step: int) -> None:
    atomic_write_json(Path(folder) / COMPLETE, {"global_step": step, "time": time.time()})


def checkpoints(resume_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` folder, newest first."""
    resume_dir = Path(resume_dir)
    if not resume_dir.is_dir():
        return []
    found = []
    for p in resume_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def last_complete_checkpoint(resume_dir: str | os.PathLike, set_aside: bool = True
                             ) -> str | None:
    """The newest complete checkpoint; newer incomplete ones are renamed
    ``checkpoint-N.incomplete`` (with ``set_aside``) so nothing resumes or rotates them."""
    for step, folder in checkpoints(resume_dir):
        if is_complete(folder):
            return str(folder)
        log.warning("skipping %s: incomplete (interrupted while it was written)", folder)
        if set_aside:
            _set_aside(folder, "incomplete")
    return None


def _set_aside(folder: Path, why: str) -> Path:
    target = folder.with_name(f"{folder.name}.{why}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.{why}{n}")
    folder.rename(target)
    return target


def save_complete_checkpoint(trainer, save, model, trial) -> None:
    """Run the Trainer's ``_save_checkpoint`` (``save``) without its rotation, mark the new
    folder complete, then rotate: old checkpoints go only once a newer one is complete."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    run_dir = trainer._get_output_dir(trial=trial)
    folder = Path(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if trainer.args.should_save:
        # Saving over an existing folder (the state before a non-finite value, at a step
        # that was just saved): it is incomplete until written again.
        (folder / COMPLETE).unlink(missing_ok=True)
    limit = trainer.args.save_total_limit
    trainer.args.save_total_limit = None
    try:
        save(model, trial)
    finally:
        trainer.args.save_total_limit = limit
    if not trainer.args.should_save:
        return
    mark_complete(folder, trainer.state.global_step)
    if limit:
        for _, old in checkpoints(run_dir)[limit:]:
            if trainer.state.best_model_checkpoint and Path(
                    trainer.state.best_model_checkpoint) == old:
                continue
            import shutil

            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Tracked config


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_digest(directory: str | os.PathLike) -> str | None:
    """sha256 of a checkpoint's weights: its trained.safetensors (the value earlier runs
    recorded), else, for a portable-only folder (a shipped checkpoint), a sha256 over its
    peft/embedding files by relative path; None when it holds neither."""
    from icae.models.checkpoint import WEIGHTS

    root = Path(directory)
    if (root / WEIGHTS).is_file():
        return file_sha256(root / WEIGHTS)
    files = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + file_sha256(path).encode())
    return h.hexdigest()


def tracked_config(cfg, stage: str, model=None) -> dict:
    """What can change the weights a ``stage`` run produces (see the module docstring)."""
    from icae.config import to_dict

    t = getattr(cfg, stage)
    untracked = NOT_TRACKED | set((cfg.workflow or {}).get("untracked_keys", []))
    training = {k: v for k, v in to_dict(t).items() if k not in untracked}
    m = to_dict(cfg.model)
    m.pop("model_dir", None)  # where the base model lies; its fingerprint says what it is
    if cfg.model.model_type != "icae":
        for k in ICAE_ONLY_MODEL_KEYS:
            m.pop(k, None)
    dataset = "pretrain" if stage == "pretrain" else t.dataset
    if stage == "pretrain":
        training.pop("dataset", None)
    if t.init_checkpoint:
        training["init_checkpoint"] = {"path": str(t.init_checkpoint),
                                       "weights_sha256": checkpoint_digest(t.init_checkpoint)}
    elif stage == "pretrain":
        training.pop("init_checkpoint", None)
    data = to_dict(cfg.data)
    out = {
        "model": m,
        stage: training,
        "data": {"prepared_dir": data["prepared_dir"], "skip_bad_lines": data["skip_bad_lines"],
                 dataset: data[dataset]},
        "seed": cfg.seed,
    }
    if model is not None:
        from icae.models.checkpoint import base_fingerprint

        fp = json.dumps(base_fingerprint(model), sort_keys=True)
        out["base_fingerprint_sha256"] = hashlib.sha256(fp.encode()).hexdigest()
    return out


def differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, old, new)`` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append((sub, "(absent)", new[key]))
            elif key not in new:
                out.append((sub, old[key], "(absent)"))
            else:
                out += differences(old[key], new[key], sub)
        return out
    return [] if old == new else [(prefix, old, new)]


def _describe(diffs, limit: int = 6) -> str:
    text = "; ".join(f"{k}: {_short(a)} there, {_short(b)} now" for k, a, b in diffs[:limit])
    return text + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------
# The decision


@dataclass
class ResumePolicy:
    """How ``train`` treats existing state. ``run_config``: the tracked config (None: no
    config check, as in tests and benchmarks); ``resume_from``: an explicit checkpoint
    (optimisation settings may differ); ``fresh``: discard resume state and replace an
    existing final checkpoint; ``stage``: the config section, for messages."""

    run_config: dict | None = None
    resume_from: str | None = None
    fresh: bool = False
    stage: str = "pretrain"
    command: str | None = None  # how to rerun, for messages


@dataclass
class ResumeDecision:
    checkpoint: str | None
    refresh_optimizer: bool = False  # apply the new config's optimiser settings on resume
    changed: list = dataclasses.field(default_factory=list)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResumeError(f"{path}: corrupt ({exc}); delete it, or rerun with --fresh") from None
    return data if isinstance(data, dict) else None


def decide(resume_dir: Path, output_dir: Path, policy: ResumePolicy | None) -> ResumeDecision:
    """Check existing state against ``policy``; return what to resume from. Raises
    :class:`ResumeError` (naming the differing keys and the ways on) instead of resuming
    or overwriting a run of another config."""
    policy = policy or ResumePolicy()
    resume_dir, output_dir = Path(resume_dir), Path(output_dir)
    stage = policy.stage
    again = policy.command or f"python -m icae {stage} ..."
    tracked = policy.run_config
    if policy.fresh:
        for _, folder in checkpoints(resume_dir):
            log.warning("--fresh: deleting %s", folder)
            import shutil

            shutil.rmtree(folder)
        (resume_dir / RUN_FILE).unlink(missing_ok=True)
    if policy.resume_from:
        if tracked is not None:
            _check_final(output_dir, tracked, policy, again, explicit=True)
        return _explicit(resume_dir, tracked, policy, again)
    found = checkpoints(resume_dir)
    if tracked is not None and found:
        stored = _read_json(resume_dir / RUN_FILE)
        if stored is None:
            raise ResumeError(
                f"{resume_dir} holds checkpoints but no {RUN_FILE}, so the config that "
                f"made them is unknown; rerun with --fresh (or delete that folder) to start "
                f"over, or with "
                f"--resume-from {found[0][1]} to continue from them on purpose")
        stored = stored.get("tracked", stored)
        diffs = differences(stored, tracked)
        if diffs:
            newest = last_complete_checkpoint(resume_dir, set_aside=False)
            hint = (f", or --resume-from {newest} to continue that run with the changed "
                    "optimisation settings" if newest and _only_optimisation(diffs, stage)
                    else "")
            raise ResumeError(
                f"{resume_dir} holds checkpoints of a run with a different config "
                f"({_describe(diffs)}). Rerun with --fresh (or delete that folder) to "
                f"discard them and start over"
                f"{hint}, or set {stage}.output_dir (or {stage}.resume_dir) elsewhere")
    if tracked is not None:
        _check_final(output_dir, tracked, policy, again)
    ckpt = last_complete_checkpoint(resume_dir)
    if found and ckpt is None:
        log.warning("%s: no complete checkpoint; starting from the beginning", resume_dir)
    _write_run_file(resume_dir, tracked)
    return ResumeDecision(ckpt)


def _only_optimisation(diffs, stage: str) -> bool:
    return all(k.split(".")[0] == stage and k.split(".")[1] in OPTIMISATION_KEYS
               for k, _, _ in diffs)


def _check_final(output_dir: Path, tracked: dict, policy: ResumePolicy, again: str,
                 explicit: bool = False) -> None:
    from icae.models.checkpoint import META

    meta = _read_json(output_dir / META)
    if meta is None:
        return
    old = meta.get("run_config")
    if old == tracked:
        return
    if explicit and isinstance(old, dict) and _only_optimisation(differences(old, tracked),
                                                                 policy.stage):
        log.warning("--resume-from: %s will be replaced by the resumed run", output_dir)
        return
    if policy.fresh:
        log.warning("--fresh: %s (another config) will be replaced", output_dir)
        return
    what = (_describe(differences(old, tracked)) if isinstance(old, dict)
            else "it records no tracked config (written by an older version)")
    raise ResumeError(
        f"{output_dir} already holds a final checkpoint of a different config ({what}); "
        f"rerun with --fresh to replace it, or set {policy.stage}.output_dir elsewhere")


def _explicit(resume_dir: Path, tracked: dict | None, policy: ResumePolicy, again: str
              ) -> ResumeDecision:
    src = Path(policy.resume_from)
    if not src.is_dir():
        raise ResumeError(f"--resume-from {src}: no such checkpoint folder")
    if not is_complete(src):
        raise ResumeError(f"--resume-from {src}: not a complete Trainer checkpoint (needs "
                          f"{', '.join(_required_files())} and {COMPLETE})")
    changed = []
    if tracked is not None:
        stored = _read_json(src.parent / RUN_FILE)
        if stored is not None:
            changed = differences(stored.get("tracked", stored), tracked)
            other = [d for d in changed if not _only_optimisation([d], policy.stage)]
            if other:
                raise ResumeError(
                    f"--resume-from {src}: only optimisation settings ("
                    f"{', '.join(sorted(OPTIMISATION_KEYS))}) may differ from the run that "
                    f"made it, but {_describe(other)}; start a new run with --fresh instead")
        else:
            log.warning("--resume-from %s: %s has no %s; cannot compare configs", src,
                        src.parent, RUN_FILE)
    if changed:
        log.warning("--resume-from %s with changed optimisation settings: %s", src,
                    _describe(changed, limit=20))
    if src.parent.resolve() == resume_dir.resolve():
        step = int(_CKPT_RE.match(src.name).group(1)) if _CKPT_RE.match(src.name) else None
        for s, folder in checkpoints(resume_dir):
            if step is not None and s > step:
                moved = _set_aside(folder, "superseded")
                log.warning("set aside %s as %s (a newer state of the run resumed from %s)",
                            folder, moved.name, src)
    _write_run_file(resume_dir, tracked, changed)
    return ResumeDecision(str(src), refresh_optimizer=True, changed=changed)


def _write_run_file(resume_dir: Path, tracked: dict | None, changed=None) -> None:
    if tracked is None:
        return
    resume_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_json(resume_dir / RUN_FILE) or {}
    history = list(previous.get("resumed_with_changes", []))
    if changed:
        history.append([[k, a, b] for k, a, b in changed])
    atomic_write_json(resume_dir / RUN_FILE, {"tracked": tracked,
                                              "resumed_with_changes": history})


# ---------------------------------------------------------------------------------------
# Hooks called by the trainer


def reached_max_steps(checkpoint: str | None, max_steps: int) -> bool:
    """Whether ``checkpoint`` is already at ``max_steps`` (a kill after its last save).
    The Trainer would run one step more when resuming from it."""
    if not checkpoint or max_steps <= 0:
        return False
    state = _read_json(Path(checkpoint) / TRAINER_STATE) or {}
    return int(state.get("global_step", 0)) >= max_steps


def restore_finished(trainer, model, checkpoint: str):
    """Load a checkpoint at ``max_steps`` instead of training: the weights and the
    Trainer state (log history); returns a TrainOutput as ``trainer.train`` would."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    from icae.models.checkpoint import load_checkpoint

    load_checkpoint(model, checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    losses = [(r["step"], r["loss"]) for r in trainer.state.log_history if "loss" in r]
    # Step-weighted mean of the logged interval means: the Trainer's training_loss.
    total, prev = 0.0, 0
    for step, loss in losses:
        total += loss * (step - prev)
        prev = step
    loss = total / prev if prev else float("nan")
    log.info("%s is already at max_steps=%d: nothing left to train", checkpoint,
             trainer.state.global_step)
    return TrainOutput(trainer.state.global_step, loss, {"train_loss": loss})


def fresh_hyperparameters(optimizer) -> list[dict]:
    """The optimizer's param-group settings as the current config made them."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_hyperparameters(trainer, fresh: list[dict]) -> None:
    """After the optimizer / scheduler states were loaded from a checkpoint: keep their
    moments and step counts but use the current config's learning rate, weight decay and
    schedule (loaded states otherwise silently restore the old ones)."""
    opt, sched = trainer.optimizer, trainer.lr_scheduler
    for group, new in zip(opt.param_groups, fresh):
        for key in ("lr", "initial_lr", "weight_decay", "betas", "eps"):
            if key in new:
                group[key] = new[key]
    if sched is not None and hasattr(sched, "base_lrs"):
        sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
        if hasattr(sched, "lr_lambdas"):
            # The lambdas are the current config's (a loaded LambdaLR state keeps them).
            step = sched.last_epoch
            for group, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(step)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
    log.info("resumed with the current optimisation settings: lr now %s",
             [g["lr"] for g in opt.param_groups])


def gradients_finite(model):
    """A device boolean: every gradient of ``model`` is finite (None without gradients).
    Not read here, so that the caller decides when to synchronise."""
    import torch
    from torch.distributed.tensor import DTensor

    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    if any(isinstance(g, DTensor) for g in grads):  # sharded (fsdp): one norm per tensor
        flag = torch.isfinite(torch.stack([g.float().norm() for g in grads])).all()
        # (a collective: every process checks its step)
        return flag.full_tensor() if isinstance(flag, DTensor) else flag
    # One fused norm over all gradients: non-finite when any element is (or when the
    # norm overflows, which gradient clipping could not use either).
    return torch.isfinite(torch.nn.utils.get_total_norm(grads)).all()


def save_before_nonfinite(trainer, what: str) -> str | None:
    """Save the current (finite) state as a complete checkpoint before stopping on a
    non-finite ``what``; returns its folder."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    try:
        trainer._save_checkpoint(trainer.model, trial=None)
    except Exception as exc:  # noqa: BLE001 - the non-finite error is what gets reported
        log.error("could not save the state before the non-finite %s: %s", what, exc)
        return None
    folder = Path(trainer._get_output_dir(trial=None),
                  f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if trainer.args.should_save:
        atomic_write_json(folder / NONFINITE, {
            "first_nonfinite": what, "at_step": trainer.state.global_step + 1,
            "note": "the state before the first non-finite value; resume from it with "
                    "--resume-from and lower optimisation settings"})
    return str(folder)


def nonfinite_message(what: str, value, step: int, saved: str | None, stage: str) -> str:
    if what.startswith("evaluation"):
        return (f"non-finite {what} ({value}) in the evaluation at step {step}; the "
                f"periodic checkpoints hold the training state (check the eval data)")
    where = (f"the state before it is saved in {saved}. Resume from it with lower settings, "
             f"e.g. `python -m icae {stage} ... {stage}.learning_rate=<lower> "
             f"--resume-from {saved}`" if saved else
             "the state before it could not be saved")
    return (f"non-finite {what} ({value}) at step {step + 1}; stopped before the optimizer "
            f"step, {where} (or check the data; on a GPU, {stage}.cudnn_attention=false "
            f"rules out cuDNN's attention kernels)")
