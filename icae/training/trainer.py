"""Training on the Hugging Face Trainer.

What the subclass changes and why:
- periodic checkpoints hold only the trained parameters (LoRA + learned embeddings), plus
  the Trainer's optimizer / scheduler / RNG state, so resuming is exact and cheap;
- AE / LM / fine-tuning losses and trained-token counts are logged separately;
- a non-finite loss stops the run with a clear message, before the optimizer step, so the
  last periodic checkpoint stays the last good one;
- every logged step is also written to ``log.csv`` / ``log.jsonl`` (always, whatever
  ``report_to`` says).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from icae.config import TrainingConfig
from icae.models.base import collate
from icae.models.checkpoint import load_checkpoint, save_checkpoint
from icae.utils import atomic_write_text

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class ICAETrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._aux_sums: dict[str, float] = {}
        self._aux_counts: dict[str, int] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The parent passes num_items_in_batch and rescales the loss for token averaging
        # across processes; we add the checks and the separate losses.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step}; "
                "stopping. The last periodic checkpoint in "
                f"{self.args.output_dir} is the last good one (lower the learning rate or "
                "check the data, then resume)")
        if model.training:
            for key in ("ae_loss", "lm_loss", "ft_loss"):
                if key in outputs:
                    n = int(outputs[f"{key[:2]}_tokens"])
                    self._aux_sums[key] = self._aux_sums.get(key, 0.0) + float(outputs[key]) * n
                    self._aux_counts[key] = self._aux_counts.get(key, 0) + n
            self._aux_sums["trained_tokens"] = (self._aux_sums.get("trained_tokens", 0.0)
                                                + float(outputs["num_tokens"]))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add the separate losses since the last one
            for key, total in self._aux_sums.items():
                if key == "trained_tokens":
                    logs["trained_tokens"] = int(total)
                elif self._aux_counts.get(key):
                    logs[key] = round(total / self._aux_counts[key], 6)
            self._aux_sums.clear()
            self._aux_counts.clear()
        super().log(logs, *args, **kwargs)

    # Checkpoints: trained parameters only.
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        from icae.models.checkpoint import META, WEIGHTS, describe

        os.makedirs(output_dir, exist_ok=True)
        state = {n: t.detach().cpu().contiguous()
                 for n, t in self.model.trainable_state_dict().items()}
        save_file(state, os.path.join(output_dir, WEIGHTS))
        Path(output_dir, META).write_text(json.dumps(describe(self.model), indent=2))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        load_checkpoint(model or self.model, resume_from_checkpoint)


class LogFileCallback(TrainerCallback):
    """Mirror the Trainer's log history to CSV and JSONL after every log, and print one
    quiet line per log when not attached to a terminal."""

    def __init__(self, folder: Path, quiet_lines: bool):
        self.folder = Path(folder)
        self.quiet_lines = quiet_lines
        self._clock = None

    def on_train_begin(self, args, state, control, **kwargs):
        from icae.progress import StepClock

        self._clock = StepClock(state.global_step, state.max_steps)  # resumed: from here

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        write_log_files(state.log_history, self.folder)
        if self.quiet_lines and logs:
            parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in logs.items()]
            timing = self._clock.line(state.global_step, logs) if self._clock else ""
            print(f"[step {state.global_step}/{state.max_steps}] " + " ".join(parts)
                  + (f" | {timing}" if timing else ""), file=sys.stderr, flush=True)


def write_log_files(history: list[dict], folder: Path) -> None:
    rows = [dict(r) for r in history]
    keys: list[str] = ["step"]
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "log.csv", buf.getvalue())
    atomic_write_text(folder / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


class AEBleuCallback(TrainerCallback):
    """At each evaluation, reconstruct a few held-out contexts and log their BLEU-1."""

    def __init__(self, model, contexts: list[list[int]], max_new_tokens: int):
        self.model = model
        self.contexts = contexts
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.contexts or metrics is None:
            return
        from icae.evaluation.metrics import bleu1

        model = self.model
        was_training = model.training
        model.eval()
        prompts = [model.prompts.autoencoding_prompt(c) for c in self.contexts]
        outs = model.generate(prompts, max_new_tokens=self.max_new_tokens)
        tok = model.tokenizer
        scores = [bleu1(tok.decode(c, skip_special_tokens=True),
                        tok.decode(o, skip_special_tokens=True))
                  for c, o in zip(self.contexts, outs)]
        if was_training:
            model.train()
        value = sum(scores) / len(scores)
        metrics["eval_ae_bleu1"] = value
        state.log_history.append({"eval_ae_bleu1": value, "step": state.global_step})


def _checkpointing_args(enabled: bool) -> dict:
    """transformers 5 renamed gradient_checkpointing* to activation_checkpointing*; the old
    names still work but warn in every training log."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = ("activation_checkpointing" if "activation_checkpointing" in names
              else "gradient_checkpointing")
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


def training_arguments(t: TrainingConfig, resume_dir: Path, seed: int, has_eval: bool
                       ) -> TrainingArguments:
    interactive = t.progress and sys.stderr.isatty()
    report_to = [r for r in t.report_to if r != "none"] or "none"
    return TrainingArguments(
        output_dir=str(resume_dir),
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        **_checkpointing_args(t.gradient_checkpointing),
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if (has_eval and t.eval_steps) else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not interactive,
        save_only_model=False,
        label_names=["labels"],
    )


def last_checkpoint(resume_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not resume_dir.is_dir():
        return None
    return get_last_checkpoint(str(resume_dir))


def train(model, train_examples, eval_examples, t: TrainingConfig, *, output_dir: Path,
          resume_dir: Path, seed: int, config_text: str, ae_contexts=None,
          extra_meta: dict | None = None, stop_after_steps: int | None = None) -> dict:
    """Train, resuming from ``resume_dir`` when it holds a checkpoint; write the final
    checkpoint (trained parameters + config + logs) atomically to ``output_dir``."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(t, resume_dir, seed, bool(eval_examples))
    callbacks = [LogFileCallback(resume_dir, quiet_lines=not (t.progress and sys.stderr.isatty()))]
    if ae_contexts:
        callbacks.append(AEBleuCallback(model, ae_contexts,
                                        max(len(c) for c in ae_contexts) + 2))
    if stop_after_steps is not None:
        callbacks.append(_StopAfter(stop_after_steps))
    trainer = ICAETrainer(model=model, args=args, train_dataset=train_examples,
                          eval_dataset=eval_examples or None,
                          data_collator=lambda batch: collate(batch, model.pad_id),
                          callbacks=callbacks)
    if not sys.stderr.isatty() or not t.progress:
        # LogFileCallback prints the quiet per-log lines; the Trainer's printer would repeat
        # each one as a dict.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(resume_dir)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    if stop_after_steps is not None and trainer.state.global_step < (
            args.max_steps if args.max_steps > 0 else math.inf):
        return {"interrupted_at": trainer.state.global_step}
    write_log_files(trainer.state.log_history, resume_dir)
    extra_files = {name: (resume_dir / name).read_text() for name in ("log.csv", "log.jsonl")}
    meta = {"global_step": trainer.state.global_step, "train_loss": result.training_loss}
    meta.update(extra_meta or {})
    save_checkpoint(model, output_dir, config_text=config_text, extra=meta,
                    extra_files=extra_files)
    return meta


class _StopAfter(TrainerCallback):
    """Test hook: behave like an interruption after ``steps`` optimizer steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
