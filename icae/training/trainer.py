"""Training on the Hugging Face Trainer.

What the subclass changes and why:
- periodic checkpoints hold only the trained parameters (LoRA + learned embeddings), plus
  the Trainer's optimizer / scheduler / RNG state, so resuming is exact and cheap;
- AE / LM / fine-tuning losses and trained-token counts are logged separately;
- a non-finite loss or gradient stops the run with a clear message, before the optimizer
  step, and saves the state at that moment (all finite) to resume from with lower
  settings; periodic checkpoints are marked complete and a resume never takes an
  incomplete one or the state of another config (``icae/training/resume.py``);
- every logged step is also written to ``log.csv`` / ``log.jsonl`` (always, whatever
  ``report_to`` says).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from icae.config import TrainingConfig
from icae.models.checkpoint import load_checkpoint, save_checkpoint
from icae.models.objectives import Objective
from icae.training import resume as resume_mod
from icae.utils import atomic_write_text

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGradientError(NonFiniteLossError):
    pass


class ICAETrainer(Trainer):
    """``embedding_learning_rate``: a separate learning rate for the learned memory-slot
    and marker embeddings (``None``: the main one). ``separation``: the AE-vs-LM loss
    diagnostic (:class:`SeparationMonitor`) or ``None``."""

    def __init__(self, *args, embedding_learning_rate: float | None = None,
                 separation: "SeparationMonitor | None" = None,
                 length_grouping_steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_grouping_steps = length_grouping_steps
        self.embedding_learning_rate = embedding_learning_rate
        self.separation = separation
        # Device tensors summed over the steps since the last log: reading them every step
        # would synchronise host and device each time.
        self._aux: dict[str, torch.Tensor] = {}
        # This optimizer step's micro-batch losses, on the device until _check_finite_step.
        self._step_losses: list[torch.Tensor] = []
        self._refresh_optimizer = False  # resume.py: apply the current optimiser settings
        # Wall clock of this process since the Trainer was built, in every training log:
        # the steady examples/s is a difference of two late log rows (the Trainer's own
        # rate averages in compilation, warm-up and evaluation).
        self._started = time.perf_counter()

    def _get_train_sampler(self, *args, **kwargs):
        # Datasets that fix their own (seeded, shuffled) order, such as the pre-training
        # spans whose objective mix follows the training clock, are read in order.
        dataset = self.train_dataset
        if self.length_grouping_steps:
            from icae.training.spans import LengthGroupedOrder

            a = self.args
            per_step = (a.per_device_train_batch_size * a.gradient_accumulation_steps
                        * a.world_size)
            return LengthGroupedOrder(dataset.example_length, len(dataset),
                                      window=self.length_grouping_steps * per_step,
                                      batch=a.per_device_train_batch_size, seed=a.seed)
        if getattr(dataset, "ordered", False):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(dataset)
        return super()._get_train_sampler(*args, **kwargs)

    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None and self.embedding_learning_rate is not None:
            emb = [p for n, p in self.model.named_parameters()
                   if p.requires_grad and n == "extra_embeddings"]
            rest = [p for n, p in self.model.named_parameters()
                    if p.requires_grad and n != "extra_embeddings"]
            cls, kw = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = [{"params": rest, "weight_decay": self.args.weight_decay}]
            if emb:  # the plain-LLM baseline has no learned embeddings
                groups.append({"params": emb, "weight_decay": 0.0,
                               "lr": self.embedding_learning_rate})
            self.optimizer = cls(groups, **kw)
            return self.optimizer
        return super().create_optimizer(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The parent passes num_items_in_batch and rescales the loss for token averaging
        # across processes; we add the checks and the separate losses.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if model.training:
            # Checked with the gradients before the optimizer step (_check_finite_step):
            # reading it here would synchronise host and device on every micro-batch.
            self._step_losses.append(loss.detach())
            for obj in Objective:
                if obj.loss_sum_key in outputs:
                    self._add(obj.loss_sum_key, outputs[obj.loss_sum_key])
                    self._add(obj.tokens_key, outputs[obj.tokens_key])
            self._add("trained_tokens", outputs["num_tokens"])
        elif not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(resume_mod.nonfinite_message(
                "evaluation loss", loss.item(), self.state.global_step, None, self._stage))
        return (loss, outputs) if return_outputs else loss

    _AUX_KEYS = tuple(key for obj in Objective
                      for key in (obj.loss_sum_key, obj.tokens_key)) + ("trained_tokens",)

    def _reduced_aux(self) -> dict[str, float]:
        """The sums since the last log over every process (each process sees only its
        share of the global batch); every process logs, so every one takes part."""
        if not (self.args.world_size > 1 and torch.distributed.is_initialized()):
            return {k: float(v) for k, v in self._aux.items()}
        device = next(iter(self._aux.values())).device if self._aux else self.args.device
        # A fixed key order: a process without LM examples since the last log adds 0.
        sums = torch.stack([self._aux[k].to(device) if k in self._aux else
                            torch.zeros((), dtype=torch.float64, device=device)
                            for k in self._AUX_KEYS])
        torch.distributed.all_reduce(sums)
        return dict(zip(self._AUX_KEYS, sums.tolist()))

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().double()
        self._aux[key] = self._aux[key] + value if key in self._aux else value

    _stage = "pretrain"

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            self._check_finite_step()
        return loss

    def _check_finite_step(self) -> None:
        """Before the optimizer step, the step's one host-device synchronisation: a
        non-finite loss of any of its micro-batches, or a non-finite gradient (which would
        make every weight NaN), stops the run with the state before it saved."""
        losses = torch.stack(self._step_losses) if self._step_losses else None
        self._step_losses = []
        flags = [] if losses is None else [torch.isfinite(losses).all()]
        grads_finite = resume_mod.gradients_finite(self.model)
        if grads_finite is not None:
            flags.append(grads_finite.to(self.args.device))
        if not flags or all(torch.stack(flags).tolist()):
            return
        bad_loss = None if losses is None else next(
            (v for v in losses.tolist() if not math.isfinite(v)), None)
        if bad_loss is not None:
            saved = resume_mod.save_before_nonfinite(self, "loss")
            raise NonFiniteLossError(resume_mod.nonfinite_message(
                "training loss", bad_loss, self.state.global_step, saved, self._stage))
        saved = resume_mod.save_before_nonfinite(self, "gradient")
        raise NonFiniteGradientError(resume_mod.nonfinite_message(
            "gradient", "inf/nan", self.state.global_step, saved, self._stage))

    def _save_checkpoint(self, model, trial) -> None:
        resume_mod.save_complete_checkpoint(self, super()._save_checkpoint, model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        fresh = (resume_mod.fresh_hyperparameters(self.optimizer)
                 if checkpoint and self._refresh_optimizer else None)
        super()._load_optimizer_and_scheduler(checkpoint)
        if fresh is not None:
            resume_mod.apply_hyperparameters(self, fresh)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add the separate losses since the last one
            aux = self._reduced_aux()
            self._aux.clear()
            for obj in Objective:
                if aux.get(obj.tokens_key):
                    logs[obj.loss_key] = round(aux[obj.loss_sum_key] / aux[obj.tokens_key], 6)
            if "trained_tokens" in aux:
                logs["trained_tokens"] = int(aux["trained_tokens"])
            # Every optimizer step takes one global batch (the last may be partial).
            logs["examples_seen"] = self.state.global_step * (
                self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                * max(self.args.world_size, 1))
            logs["wall_seconds"] = round(time.perf_counter() - self._started, 3)
            if self.separation is not None:
                self.separation.update(logs)
        super().log(logs, *args, **kwargs)


    # Checkpoints: trained parameters only.
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        from icae.models.checkpoint import write_trained

        write_trained(self.model, output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.is_fsdp_enabled:
            # The Trainer wrote accelerate's sharded model (what resuming loads); the
            # gathered trained parameters make the folder a checkpoint like any other
            # (resume.is_complete, evaluation).
            from icae.models.checkpoint import write_trained

            with full_parameters(self.model):
                if self.args.should_save:
                    write_trained(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        if self.is_fsdp_enabled:  # the Trainer saved the sharded model (save_fsdp_model)
            from accelerate.utils import load_fsdp_model

            load_fsdp_model(self.accelerator.state.fsdp_plugin, self.accelerator,
                            model or self.model, resume_from_checkpoint)
            return
        load_checkpoint(model or self.model, resume_from_checkpoint)



class SeparationMonitor:
    """Warns when the autoencoding loss has not separated from the language-modelling
    loss: an AE loss about as high as the LM loss means the decoder reconstructs no better
    than it continues unseen text, i.e. it ignores the memory (ICAE's known plateau).

    After ``after_examples`` examples, a logged ``ae_loss`` above ``ratio * lm_loss`` (the
    last logged LM loss) logs a warning, once, and sets ``logs["ae_lm_separated"]`` on every
    log line from then on. Without an LM loss yet (an autoencoding-only warm-up) there is no
    verdict: the first AE losses are inflated by the untrained memory, so falling below them
    says nothing (on 2026-12-01/02 frozen-decoder runs fell from 7.9 to a 3.6 plateau).
    """

    def __init__(self, after_examples: int, ratio: float = 0.8):
        self.after_examples = after_examples
        self.ratio = ratio
        self.last_lm: float | None = None
        self.warned = False

    def update(self, logs: dict) -> None:
        ae, lm = logs.get(Objective.AE.loss_key), logs.get(Objective.LM.loss_key)
        if lm is not None:
            self.last_lm = lm
        if ae is None or self.last_lm is None:
            return
        separated = ae < self.ratio * self.last_lm
        if logs.get("examples_seen", 0) < self.after_examples:
            return
        logs["ae_lm_separated"] = int(separated)
        if not separated and not self.warned:
            self.warned = True
            log.warning(
                "after %d examples the autoencoding loss (%.3f) has not separated from the "
                "LM loss (%.3f): the decoder is ignoring the memory. ICAE often plateaus "
                "here for a while; if it persists, try autoencoding-only warm-up "
                "(data.pretrain.ae_only_examples), shorter spans (data.pretrain.min_len "
                "with model.mem_size), a decoder adapter (model.train_decoder) or LoRA on "
                "every linear layer (docs/results/smollm2-135m.md)",
                logs["examples_seen"], ae, self.last_lm)


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
    """At each evaluation, reconstruct a few held-out contexts and log their BLEU-1 and
    BLEU-4 (the second sees word order: linspace positions reconstructed the words but
    not their order, 2026-12-07)."""

    def __init__(self, model, contexts: list[list[int]], max_new_tokens: int):
        self.model = model
        self.contexts = contexts
        self.max_new_tokens = max_new_tokens

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.contexts or metrics is None:
            return
        from icae.evaluation.metrics import bleu1, bleu4

        model = self.model
        was_training = model.training
        model.eval()
        prompts = [model.prompts.autoencoding_prompt(c) for c in self.contexts]
        # Decoding through compiled blocks (pretrain.compile_layers) compiles new graphs for
        # its prefill and KV-cache shapes (dynamo's recompile limit was hit at the first
        # periodic evaluation on an H200, 2026-12-02); a few reconstructions run fine eagerly.
        # (Only then: the stance imports dynamo, seconds per process.)
        eager = (torch.compiler.set_stance("force_eager")
                 if model.layers_compiled else contextlib.nullcontext())
        with eager:
            outs = model.generate(prompts, max_new_tokens=self.max_new_tokens)
        tok = model.tokenizer
        pairs = [(tok.decode(c, skip_special_tokens=True), tok.decode(o, skip_special_tokens=True))
                 for c, o in zip(self.contexts, outs)]
        if was_training:
            model.train()
        entry = {f"eval_ae_{metric.__name__}": sum(metric(*p) for p in pairs) / len(pairs)
                 for metric in (bleu1, bleu4)}
        metrics.update(entry)
        state.log_history.append({**entry, "step": state.global_step})


def _checkpointing_args(enabled: bool) -> dict:
    """transformers 5 renamed gradient_checkpointing* to activation_checkpointing*; the old
    names still work but warn in every training log."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = ("activation_checkpointing" if "activation_checkpointing" in names
              else "gradient_checkpointing")
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


def fsdp_layer_classes(model) -> list[str]:
    """Class names of the base model's decoder layers: the FSDP2 units. Each layer's base
    weights and both its LoRA adapters are gathered together, so the encoder and decoder
    passes run on the same (one) sharded copy; the rest (embeddings, LM head, final norm,
    ICAE's learned extra_embeddings) is the root unit, gathered for the whole step."""
    try:
        layers = model.transformer_layers()
    except ValueError as exc:
        raise ValueError(f"fsdp: {exc}; set pretrain.fsdp / finetune.fsdp to \"\"") from exc
    return list(dict.fromkeys(type(m).__name__ for m in layers))


def fsdp_arguments(t: TrainingConfig, layer_classes: list[str]) -> dict:
    """``fsdp`` / ``fsdp_config`` of TrainingArguments for ``t.fsdp`` (empty when off)."""
    if not t.fsdp:
        return {}
    return {
        "fsdp": f"{t.fsdp} auto_wrap" + (" offload" if t.fsdp_cpu_offload else ""),
        "fsdp_config": {
            "version": 2,
            # FSDP2's fully_shard keeps the modules (and our LoRA layer flags) in place:
            # adapter switching and the checkpointing context_fn work unchanged.
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": list(layer_classes),
            "reshard_after_forward": t.fsdp == "full_shard",
            # Our own checkpointing (TrainingConfig.gradient_checkpointing) restores the
            # adapter state on recomputation; FSDP's would not.
            "activation_checkpointing": False,
            "cpu_ram_efficient_loading": False,
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    }


def training_arguments(t: TrainingConfig, resume_dir: Path, seed: int, has_eval: bool,
                       fsdp_layers: list[str] | None = None) -> TrainingArguments:
    """``fsdp_layers``: :func:`fsdp_layer_classes` of the model, needed when ``t.fsdp``."""
    if t.fsdp and not fsdp_layers:
        raise ValueError("fsdp: training_arguments needs the decoder layer classes")
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
        # Its per-step isnan check would synchronise host and device every step; our
        # compute_loss stops on a non-finite loss anyway.
        logging_nan_inf_filter=False,
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
        # accelerate's data loader moves each batch to the device; from pinned memory the
        # copy need not wait for the device's queued work (a blocking copy did, for every
        # tensor of every micro-batch: 13 of 14 synchronisations per step, H100, 2026-12-07).
        accelerator_config={"non_blocking": torch.cuda.is_available()},
        # Several processes without CUDA (torchrun on CPU, the sharding test): accelerate
        # joins them into one gloo job only when told to use the CPU; otherwise each
        # process would train alone on its own share of the data.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        disable_tqdm=not interactive,
        save_only_model=False,
        label_names=["labels"],
        **fsdp_arguments(t, fsdp_layers or []),
    )


def set_cudnn_attention(enabled: bool) -> bool:
    """Let SDPA take cuDNN's attention kernels in training on CUDA, or not
    (``pretrain.cudnn_attention`` / ``finetune.cudnn_attention``).

    Since torch 2.11 cuDNN is SDPA's default backend on Hopper, and its backward returns
    NaN query gradients when an attention mask is passed and the sequence length is 64
    modulo 128 with a query row whose logsumexp is very negative, as a fully masked
    padding row is (pytorch/pytorch#196678, huggingface/trl#7181). Our left-padded batches
    had such rows: on an H200 (torch 2.11, 2026-12-01) SmolLM2 fine-tuning and pre-training
    runs stopped on a NaN loss after 7 to 145 steps, so training turned cuDNN off. Training
    batches are now right-padded and pass no mask (LoRAWrappedModel.causal_attention),
    which the bug report finds clean with cuDNN; left-padded passes (evaluation,
    generation) still carry masks but run no backward. Returns whether anything was
    set."""
    if not torch.cuda.is_available():
        return False
    torch.backends.cuda.enable_cudnn_sdp(bool(enabled))
    return True


def train(model, train_examples, eval_examples, t: TrainingConfig, *, output_dir: Path,
          resume_dir: Path, seed: int, config_text: str, ae_contexts=None,
          extra_meta: dict | None = None,
          resume_policy: resume_mod.ResumePolicy | None = None,
          callbacks: list[TrainerCallback] | None = None) -> dict:
    """Train, resuming from ``resume_dir`` when it holds a checkpoint; write the final
    checkpoint (trained parameters + config + logs) atomically to ``output_dir``.
    ``callbacks``: more Trainer callbacks, after the run's own."""
    decision = resume_mod.decide(resume_dir, output_dir, resume_policy)
    set_cudnn_attention(t.cudnn_attention)
    if t.compile_layers:
        log.info("compiled %d decoder layers (torch.compile)", model.compile_layers())
    if t.loss_chunk_tokens:
        model.loss_chunk_tokens = t.loss_chunk_tokens
    resume_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(t, resume_dir, seed, bool(eval_examples),
                              fsdp_layers=fsdp_layer_classes(model) if t.fsdp else None)
    extra_callbacks = list(callbacks or [])
    callbacks = [LogFileCallback(resume_dir, quiet_lines=not (t.progress and sys.stderr.isatty()))]
    if ae_contexts:
        callbacks.append(AEBleuCallback(model, ae_contexts,
                                        max(len(c) for c in ae_contexts) + 2))
    if t.max_train_seconds:
        callbacks.append(_StopAtTime(t.max_train_seconds))
    stop_on_signal = StopOnSignal()
    callbacks.append(stop_on_signal)
    callbacks += extra_callbacks
    separation = (SeparationMonitor(t.separation_warning_examples)
                  if t.separation_warning_examples and model.compresses_contexts else None)
    stage = getattr(resume_policy, "stage", "pretrain")
    if t.fsdp and args.world_size < 2:
        raise ValueError(f"{stage}.fsdp={t.fsdp!r}: sharding needs several processes (a "
                         f"multi-GPU job: workflow.gpu.{stage} >= 2, or torchrun "
                         f"--nproc_per_node N -m icae {stage} ...); one process trains "
                         f"with {stage}.fsdp=\"\"")
    if t.length_grouping_steps and not hasattr(train_examples, "example_length"):
        raise ValueError(f"{stage}.length_grouping_steps={t.length_grouping_steps}: its "
                         f"training examples ({type(train_examples).__name__}) cannot tell "
                         "their lengths without encoding them; only the pre-training spans "
                         "can be grouped (set it to 0)")
    if t.fsdp:
        from icae.models.checkpoint import base_fingerprint

        base_fingerprint(model)  # cached now, while every base weight is whole
    trainer = ICAETrainer(model=model, args=args, train_dataset=train_examples,
                          eval_dataset=eval_examples or None,
                          data_collator=model.collate, callbacks=callbacks,
                          embedding_learning_rate=t.embedding_learning_rate,
                          separation=separation,
                          length_grouping_steps=t.length_grouping_steps)
    if t.fsdp and not trainer.is_fsdp_enabled:
        # accelerate (1.15) shards only on accelerators; on CPU it would quietly train
        # full copies.
        raise ValueError(f"{stage}.fsdp={t.fsdp!r}: accelerate did not enable FSDP for this "
                         f"{args.distributed_state.distributed_type} job (it shards on "
                         f"GPUs and other accelerators only)")
    if not sys.stderr.isatty() or not t.progress:
        # LogFileCallback prints the quiet per-log lines; the Trainer's printer would repeat
        # each one as a dict.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer._refresh_optimizer, trainer._stage = decision.refresh_optimizer, getattr(
        resume_policy, "stage", "pretrain")
    resume = decision.checkpoint
    if resume:
        log.info("resuming from %s", resume)
    if resume_mod.reached_max_steps(resume, args.max_steps):
        result = resume_mod.restore_finished(trainer, model, resume)
    else:
        result = trainer.train(resume_from_checkpoint=resume)
    write_log_files(trainer.state.log_history, resume_dir)
    extra_files = {name: (resume_dir / name).read_text() for name in ("log.csv", "log.jsonl")}
    per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                * max(args.world_size, 1))
    meta = {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "examples_seen": trainer.state.global_step * per_step,
            "stopped_at_time_limit": bool(t.max_train_seconds) and trainer.state.global_step
            < (args.max_steps if args.max_steps > 0 else math.inf),
            "stopped_by_signal": stop_on_signal.received,
            "train_runtime_s": result.metrics.get("train_runtime"),
            # The Trainer's own train_samples_per_second counts the planned max_steps, not
            # the steps run (wrong for a run stopped early); this counts this process' steps.
            "train_samples_per_second": (
                (trainer.state.global_step - stop_on_signal.first_step) * per_step
                / result.metrics["train_runtime"]
                if result.metrics.get("train_runtime") else None)}
    if torch.cuda.is_available():
        meta["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        meta["gpu"] = torch.cuda.get_device_name()
    meta.update(extra_meta or {})
    if resume_policy is not None and resume_policy.run_config is not None:
        meta["run_config"] = resume_policy.run_config
        meta["resumed_with_changes"] = [[k, a, b] for k, a, b in decision.changed]
    log.info("trained %d steps (%d examples) in %.0f s: %.1f examples/s%s",
             meta["global_step"], meta["examples_seen"], meta["train_runtime_s"] or 0,
             meta["train_samples_per_second"] or 0,
             f", peak GPU memory {meta['peak_gpu_memory_gib']} GiB" if "gpu" in meta else "")
    with full_parameters(model):
        # Sharded (fsdp): every process gathers, one writes.
        if not t.fsdp or trainer.is_world_process_zero():
            save_checkpoint(model, output_dir, config_text=config_text, extra=meta,
                            extra_files=extra_files)
    if t.fsdp:
        trainer.accelerator.wait_for_everyone()
    return meta


@contextmanager
def full_parameters(model):
    """Inside, the trained parameters (LoRA, ICAE's extra_embeddings) of an FSDP2-sharded
    ``model`` are whole plain tensors, so the checkpoint writers see the model as if it had
    never been sharded. Gathering is a collective: every process must enter. Only the
    trained parameters are gathered (they are small); the frozen base stays sharded (the
    checkpoint's base fingerprint is taken before sharding: :func:`train`). A model that
    is not sharded is unchanged."""
    from torch.distributed.tensor import DTensor

    swapped = []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if isinstance(p, DTensor) and p.requires_grad:
                whole = torch.nn.Parameter(p.detach().full_tensor(), requires_grad=True)
                # Past FSDP's setattr: it would register the parameter for sharding.
                module._parameters[name] = whole
                swapped.append((module, name, p))
    try:
        yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


class _StopAtTime(TrainerCallback):
    """Stop at the first step end after ``seconds`` of training in this process."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self.deadline = time.monotonic() + self.seconds

    def on_step_end(self, args, state, control, **kwargs):
        import time

        if time.monotonic() >= self.deadline:
            control.should_training_stop = True
            control.should_save = True


class StopOnSignal(TrainerCallback):
    """SIGTERM or SIGUSR1 (a scheduler's pre-emption, ``kill``, a lease running out): finish
    the current step, save and end like a completed run, instead of losing the steps since
    the last periodic checkpoint. A second signal is handled as usual (the process dies)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received: int | None = None
        self.first_step = 0  # the step this process started from (after a resume)
        self._previous: dict = {}

    def _handler(self, signum, _frame):
        import signal

        self.received = signum
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # a second signal stops at once

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        self.first_step = state.global_step
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            log.warning("signal %d received: saving at step %d and stopping",
                        self.received, state.global_step)
            control.should_training_stop = True
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs):
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

