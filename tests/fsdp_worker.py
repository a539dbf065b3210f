"""A few steps of ICAE pre-training on a tiny random model, sharded or not; run by
tests/test_fsdp.py as ``python tests/fsdp_worker.py OUT BATCH FSDP CHECKPOINTING [STOP_AFTER
[TRAIN_DECODER]]`` (one
process) or under ``torchrun --nproc_per_node 2`` (gloo on CPU). ``BATCH`` is the batch of
one process: the global batch is BATCH x processes. ``STOP_AFTER``: stop as if interrupted after that
many steps (a checkpoint is saved every step); run again to resume."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

STEPS = 3
GLOBAL_EXAMPLES = STEPS * 4


class Ordered(list):
    ordered = True  # ICAETrainer reads it in order: each step sees the same examples


def fsdp_on_cpu() -> None:
    """accelerate (1.15) turns FSDP on only for accelerator process groups (MULTI_GPU,
    MULTI_XPU, ...), never for MULTI_CPU, although torch's fully_shard runs on CPU with
    gloo. Mark the CPU job as an FSDP job the way accelerate marks a GPU one; from here on
    the Trainer and accelerate take their FSDP2 code path unchanged."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = patched


def main(out: str, batch: int, fsdp: str, checkpointing: bool, stop_after: int,
         train_decoder: bool) -> None:
    from icae.config import ModelConfig, TrainingConfig
    from icae.models import build_model
    from icae.testing import Interrupted, interrupt_after, tiny_model, tiny_tokenizer
    from icae.training.examples import pretrain_pieces
    from icae.training.spans import task_id
    from icae.training.trainer import train

    torch.use_deterministic_algorithms(True)
    if fsdp:
        fsdp_on_cpu()
    tok = tiny_tokenizer()
    cfg = ModelConfig(mem_size=4, mean_compression_rate=2.0, position_layout="epl",
                      lora_r=4, lora_alpha=8, lora_dropout=0.0, max_encoder_tokens=256,
                      train_decoder=train_decoder)
    base = tiny_model("llama", vocab_size=len(tok), seed=0)
    torch.manual_seed(1)
    model = build_model(cfg, base, tok)
    g = torch.Generator().manual_seed(2)
    examples = Ordered()
    for i in range(GLOBAL_EXAMPLES):
        # Different lengths: each process pads its own batch differently from the whole.
        n = 12 + int(torch.randint(0, 12, (1,), generator=g))
        ids = torch.randint(10, len(tok), (n + 8,), generator=g).tolist()
        task = "ae" if i % 2 == 0 else "lm"
        rec = {"task": task, "context_ids": ids[:n],
               "continuation_ids": [] if task == "ae" else ids[n:]}
        pieces, _ = pretrain_pieces(model, rec)
        examples.append(model.encode(pieces, task=task_id(task)))
    t = TrainingConfig(learning_rate=1e-2, per_device_train_batch_size=batch,
                       max_steps=STEPS, logging_steps=1, progress=False,
                       separation_warning_examples=0, save_steps=1,
                       gradient_checkpointing=checkpointing, fsdp=fsdp,
                       embedding_learning_rate=3e-2)
    out_dir = Path(out)
    try:
        train(model, examples, [], t, output_dir=out_dir / "final",
              resume_dir=out_dir / "resume", seed=0, config_text="",
              callbacks=[interrupt_after(stop_after)] if stop_after else None)
    except Interrupted:
        return
    finally:
        # Leave together and take the process group down: a rank whose interpreter exits
        # with gloo's threads still running was seen to abort ("terminate called without
        # an active exception", once in a CI run of 2026-12-07 on a loaded CPU).
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
        (out_dir / "sharded").write_text(str(sharded))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1",
         int(sys.argv[5]) if len(sys.argv) > 5 else 0,
         len(sys.argv) > 6 and sys.argv[6] == "1")
