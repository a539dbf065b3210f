"""``benchmark`` command: time ICAE pre-training steps, ours against the seed's way.

- ``ours``: one base model (encoder = LoRA adapter, decoder = adapter disabled), all
  segments of the batch compressed in one padded encoder pass, batch size
  ``pretrain.per_device_train_batch_size``.
- ``seed-style``: what the original implementation does: batch size 1, one encoder call
  per segment, and a second full copy of the base model as the decoder.

Both run the same forward + backward + AdamW step on the same synthetic autoencoding
examples (random token ids of ``data.pretrain.min_len`` tokens: speed does not depend on
the text), with identical trained parameters. Reported: context tokens per second, seconds
per example, and peak GPU memory (CUDA only; on CPU peak memory is not measured).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time

import torch
from accelerate.utils import send_to_device

from icae.config import ExperimentConfig
from icae.models.base import collate
from icae.models.objectives import Objective
from icae.utils import atomic_write_json, atomic_write_text, seed_everything

log = logging.getLogger(__name__)


# The bf16 dense matrix-product rate of one H200 as measured on our GPU machines (an
# 8192^3 product on random data, /work/.library/device/KINDS.md); the datasheet says ~990.
H200_BF16_TFLOPS = 788.0


def _pass_flops(n_params: int, layers: int, attn_width: int, rows: list[int]) -> float:
    """Forward FLOPs of one pass over sequences of ``rows`` real tokens: 2 per parameter
    per token for the matrix products, plus causal attention (QK^T and AV, 2 T^2 d each,
    halved by the mask) per layer. Padding is not counted: it is work a padding-free
    kernel would not do."""
    return 2.0 * n_params * sum(rows) + 2.0 * layers * attn_width * sum(t * t for t in rows)


def step_flops(model, examples) -> float:
    """Model FLOPs of one training step over ``examples`` (forward + backward = 3 x forward,
    the usual MFU convention, which also counts the weight gradients a frozen base does not
    need): the encoder pass over every segment (its tokens and slots), the decoder pass over
    each prompt, and the LM head on the labelled tokens only (as the loss computes it)."""
    base = model.base
    cfg = base.config
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    n_params = sum(p.numel() for p in base.parameters()) - emb.numel() - (
        0 if head.data_ptr() == emb.data_ptr() else head.numel())
    layers = cfg.num_hidden_layers
    attn_width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None)
                                            or cfg.hidden_size // cfg.num_attention_heads)
    encoder_rows, decoder_rows, labelled = [], [], 0
    for e in examples:
        decoder_rows.append(len(e.input_ids))
        labelled += e.num_target_tokens
        if getattr(model, "compresses_contexts", False):
            for ctx, _ in e.contexts:
                for _, n, k in model.segments(len(ctx)):
                    encoder_rows.append(n + k + int(model.encoder_bos is not None))
    forward = (_pass_flops(n_params, layers, attn_width, encoder_rows)
               + _pass_flops(n_params, layers, attn_width, decoder_rows)
               + 2.0 * head.shape[0] * head.shape[1] * labelled)
    return 3.0 * forward


def _examples(model, n: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    vocab = len(model.tokenizer)
    out = []
    for _ in range(n):
        ctx = torch.randint(0, min(vocab, model.vocab_size), (length,), generator=g).tolist()
        out.append(model.encode(model.prompts.autoencoding(ctx), task=Objective.AE))
    return out


class _SeedStyleDecoder(torch.nn.Module):
    """Wraps a second, frozen copy of the base model used only for decoding."""

    def __init__(self, model, decoder_base):
        super().__init__()
        self.model = model
        self.decoder_base = decoder_base
        for p in decoder_base.parameters():
            p.requires_grad_(False)

    def forward(self, input_ids, attention_mask, position_ids, labels, context_ids,
                context_lengths, context_starts, task, **_):
        m = self.model
        memory = m._batch_memory(context_ids, context_lengths, context_starts)
        embeds = m.decoder_embeds(input_ids, memory)
        inner = getattr(self.decoder_base, self.decoder_base.base_model_prefix)
        hidden = inner(inputs_embeds=embeds, attention_mask=attention_mask,
                       position_ids=position_ids, use_cache=False).last_hidden_state
        return m.loss_from_hidden(hidden, labels, task)


def _profile_table(prof, elapsed: float, device: torch.device) -> str:
    """The profiled steps' operators by their own device time (on CUDA), then by their own
    host time, headed by the wall clock: the device table's footer total ("Self CUDA time
    total", kernels counted once) set against it is the share of the time the device was
    busy at all; the host table shows where the rest goes."""
    averages = prof.key_averages()
    text = f"wall {elapsed:.3f} s for the profiled steps\n"
    if device.type == "cuda":
        text += averages.table(sort_by="self_device_time_total", row_limit=40) + (
            "\nThe same operators by their own host time (where a host-bound step spends "
            "its wall clock: launches, synchronisations, Python around them)\n")
    return text + averages.table(sort_by="self_cpu_time_total", row_limit=40)


def _pinned(data):
    """``data`` with its tensors in pinned host memory, as the Trainer's data loader hands
    them over: only from there is a non-blocking copy to the device asynchronous (from
    pageable memory it waits for the device's queued work)."""
    if isinstance(data, torch.Tensor):
        return data.pin_memory()
    if isinstance(data, dict):
        return {k: _pinned(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_pinned(v) for v in data)
    return data


def _time_mode(cfg: ExperimentConfig, mode: str, steps: int,
               profile_to: str | None = None) -> dict:
    """One mode's timed steps; with `profile_to`, those steps also run under
    torch.profiler and its operator table is written to that file (the timing then
    includes the profiler's overhead)."""
    from icae.models import build_model
    from icae.models.loading import load_base_model

    seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg.model).to(device)
    if cfg.pretrain.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.pretrain.compile_layers and mode == "ours":
        model.compile_layers()
    if cfg.pretrain.loss_chunk_tokens:
        model.loss_chunk_tokens = cfg.pretrain.loss_chunk_tokens
    batch_size = cfg.pretrain.per_device_train_batch_size
    step_fn = model
    if mode == "seed-style":
        batch_size = 1
        # One segment per encoder call.
        seg = int(cfg.model.mem_size * cfg.model.mean_compression_rate)
        model.cfg.max_encoder_tokens = seg + cfg.model.mem_size + 1
        decoder_base, _ = load_base_model(cfg.model)
        step_fn = _SeedStyleDecoder(model, decoder_base.to(device))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain.learning_rate)
    length = cfg.data.pretrain.min_len
    per_step = cfg.pretrain.per_device_train_batch_size  # same examples per step in both modes
    examples = _examples(model, per_step * (steps + 1), length, cfg.seed)
    dtype = torch.bfloat16 if cfg.pretrain.bf16 else None
    model.train()

    def collate_step(batch_examples) -> list[dict]:
        # Ours: the training collator (host-side encoder batches, label and placeholder
        # indices), as the Trainer's data-loader workers build it; seed-style: plain padded
        # batches.
        return [model.collate(batch_examples[i:i + batch_size]) if mode == "ours"
                else collate(batch_examples[i:i + batch_size], model.pad_id)
                for i in range(0, len(batch_examples), batch_size)]

    def one_step(micro_batches: list[dict], n_items: int) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for batch in micro_batches:
            batch = send_to_device(batch, device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = step_fn(**batch)
            loss = out["loss"] * out["num_tokens"] / n_items
            loss.backward()
            total += loss.detach()
        opt.step()
        return total  # on the device: reading it would synchronise every step

    def step_examples(s: int) -> list:
        return examples[s * per_step:(s + 1) * per_step]

    # The batches are built before the clock starts (the Trainer builds them in data-loader
    # worker processes, beside the training loop); how long that takes is reported apart.
    t0 = time.perf_counter()
    step_batches = [(_pinned(collate_step(step_examples(s))) if device.type == "cuda"
                     else collate_step(step_examples(s)),
                     sum(e.num_target_tokens for e in step_examples(s)))
                    for s in range(steps + 1)]
    collate_seconds = (time.perf_counter() - t0) / (steps + 1)
    # Warm-up (kernels, allocator). Same seed, same examples: its loss must agree between
    # modes up to rounding, which checks batched against per-segment compression.
    first_loss = float(one_step(*step_batches[0]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) if profile_to else contextlib.nullcontext() as prof:
        t0 = time.perf_counter()
        for s in range(steps):
            one_step(*step_batches[s + 1])
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    if profile_to:
        atomic_write_text(profile_to, _profile_table(prof, elapsed, device))
    flops = sum(step_flops(model, examples[(s + 1) * per_step:(s + 2) * per_step])
                for s in range(steps))
    result = {
        "mode": mode, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "steps": steps, "examples_per_step": per_step, "micro_batch": batch_size,
        "context_tokens": length, "mem_size": cfg.model.mem_size,
        "compression_rate": cfg.model.mean_compression_rate,
        "seconds_per_step": elapsed / steps,
        "collate_seconds_per_step": collate_seconds,
        "first_step_loss": first_loss,
        "context_tokens_per_s": steps * per_step * length / elapsed,
        "examples_per_s": steps * per_step / elapsed,
        "model_tflops_per_s": flops / elapsed / 1e12,
        "mfu_vs_h200_measured": flops / elapsed / 1e12 / H200_BF16_TFLOPS,
        "compile_layers": bool(cfg.pretrain.compile_layers and mode == "ours"),
        "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                             if device.type == "cuda" else None),
        "params_total": sum(p.numel() for p in step_fn.parameters()),
    }
    del model, step_fn, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run(cfg: ExperimentConfig, args) -> list[dict]:
    modes = ["ours", "seed-style"] if args.mode == "both" else [args.mode]
    results = [_time_mode(cfg, mode, args.steps) for mode in modes]
    if len(results) == 2:
        ratio = results[0]["context_tokens_per_s"] / results[1]["context_tokens_per_s"]
        results[0]["speedup_vs_seed_style"] = ratio
    for r in results:
        mem = f"{r['peak_gpu_mem_gib']:.2f} GiB" if r["peak_gpu_mem_gib"] is not None else "n/a"
        print(f"{r['mode']:>10}: {r['context_tokens_per_s']:.1f} ctx tok/s, "
              f"{r['seconds_per_step']:.3f} s/step, peak {mem}, params {r['params_total']:,}")
    if args.out:
        atomic_write_json(args.out, results)
    return results
