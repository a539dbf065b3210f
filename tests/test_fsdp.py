"""FSDP2 sharding (pretrain.fsdp / finetune.fsdp): the configuration, the TrainingArguments
it produces, and a 2-process gloo run on CPU against the unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icae.config import TrainingConfig, load_config

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "fsdp_worker.py"
# float32 on CPU; the sharded run sums gradients in another order (reduce-scatter over 2
# processes) and pads each half-batch on its own: a few float32 ulps per step.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def test_fsdp_config_validated():
    cfg = load_config(None, ["pretrain.fsdp=full_shard", "finetune.fsdp=shard_grad_op",
                             "finetune.fsdp_cpu_offload=true"])
    assert (cfg.pretrain.fsdp, cfg.finetune.fsdp) == ("full_shard", "shard_grad_op")
    with pytest.raises(ValueError, match=r"^pretrain\.fsdp: must be one of"):
        load_config(None, ["pretrain.fsdp=zero3"])
    with pytest.raises(ValueError, match=r"^finetune\.fsdp_cpu_offload: needs finetune\.fsdp"):
        load_config(None, ["finetune.fsdp_cpu_offload=true"])


def test_fsdp_training_arguments(tiny_tok, tmp_path):
    from tests.conftest import make_icae

    from icae.training.trainer import fsdp_arguments, fsdp_layer_classes

    model = make_icae(tiny_tok)
    layers = fsdp_layer_classes(model)
    assert layers == ["LlamaDecoderLayer"]
    assert fsdp_arguments(TrainingConfig(), layers) == {}
    full = fsdp_arguments(TrainingConfig(fsdp="full_shard"), layers)
    assert full["fsdp"] == "full_shard auto_wrap"
    c = full["fsdp_config"]
    assert (c["version"], c["transformer_layer_cls_to_wrap"], c["reshard_after_forward"]) == (
        2, ["LlamaDecoderLayer"], True)
    assert c["activation_checkpointing"] is False  # ours restores the adapter state
    grad_op = fsdp_arguments(TrainingConfig(fsdp="shard_grad_op", fsdp_cpu_offload=True),
                             layers)
    assert grad_op["fsdp"] == "shard_grad_op auto_wrap offload"
    assert grad_op["fsdp_config"]["reshard_after_forward"] is False
    # TrainingArguments accepts them and parses them as FSDP2 (single process: the
    # Trainer itself would refuse FSDP outside a distributed job).
    from icae.training.trainer import training_arguments

    args = training_arguments(TrainingConfig(fsdp="full_shard"), tmp_path, 0, False,
                              fsdp_layers=layers)
    assert args.fsdp_config["version"] == 2
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    args = training_arguments(TrainingConfig(fsdp="shard_grad_op"), tmp_path, 0, False,
                              fsdp_layers=layers)
    assert args.fsdp_config["reshard_after_forward"] is False
    with pytest.raises(ValueError, match="decoder layer classes"):
        training_arguments(TrainingConfig(fsdp="full_shard"), tmp_path, 0, False)


def _fsdp2_available() -> str | None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "torch.distributed with gloo is not available in this torch build"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    return None


def _run(out: Path, processes: int, batch: int, fsdp: str, checkpointing: bool,
         stop_after: int = 0, train_decoder: bool = False):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    args = [str(WORKER), str(out), str(batch), fsdp, "1" if checkpointing else "0",
            str(stop_after), "1" if train_decoder else "0"]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *args] if processes > 1
           else [sys.executable, *args])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    printed = proc.stdout + proc.stderr  # LogFileCallback: a line per step run here
    if stop_after:
        assert f"[step {stop_after}/3]" in printed and "[step 3/3]" not in printed, printed
        return None
    rows = [json.loads(line) for line in (out / "resume" / "log.jsonl").read_text().splitlines()]
    # ae_loss / lm_loss / trained_tokens: summed over the processes before logging.
    losses = [(r["loss"], r["grad_norm"], r["ae_loss"], r["lm_loss"], r["trained_tokens"])
              for r in rows if "loss" in r]
    from safetensors.torch import load_file

    return losses, load_file(str(out / "final" / "trained.safetensors")), printed


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    """The unsharded references (one process, the whole global batch of 4), by
    model.train_decoder."""
    why = _fsdp2_available()
    if why:
        pytest.skip(why)
    done = {}

    def get(train_decoder: bool = False):
        if train_decoder not in done:
            out = tmp_path_factory.mktemp("fsdp") / "plain"
            done[train_decoder] = _run(out, 1, 4, "", False, train_decoder=train_decoder)
        return done[train_decoder]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("fsdp, checkpointing, train_decoder", [
    ("full_shard", True, False), ("shard_grad_op", False, False),
    ("full_shard", True, True)])  # encoder and decoder adapters switched on one base
def test_sharded_pretraining_matches_unsharded(plain_runs, tmp_path, fsdp, checkpointing,
                                               train_decoder):
    """2 processes x 2 examples, sharded, against 1 process x 4: same global batches."""
    plain_losses, plain, _ = plain_runs(train_decoder)
    losses, sharded, _ = _run(tmp_path / "sharded", 2, 2, fsdp, checkpointing,
                              train_decoder=train_decoder)
    assert (tmp_path / "sharded" / "sharded").read_text() == "True"  # FSDP really ran
    assert len(losses) == len(plain_losses) == 3
    for row, ref in zip(losses, plain_losses):
        assert row[:4] == pytest.approx(ref[:4], rel=LOSS_RTOL)  # loss, grad norm, ae, lm
        assert row[4] == ref[4]  # trained tokens of the global batch
    # The checkpoint gathered from the shards: the same tensors (LoRA of both adapters'
    # layers and the learned extra_embeddings), trained to the same values.
    assert sharded.keys() == plain.keys() and "extra_embeddings" in sharded
    assert any(".lora_A.decoder." in k for k in plain) == train_decoder
    for name in plain:
        torch.testing.assert_close(sharded[name], plain[name], atol=WEIGHT_ATOL, rtol=0)
    # Training moved the weights (the comparison is not between two untrained copies).
    assert plain_losses[0] != plain_losses[-1]


@pytest.mark.slow
def test_sharded_run_resumes_from_its_sharded_checkpoint(plain_runs, tmp_path):
    """Interrupted after 2 of 3 steps and resumed (sharded checkpoint: model, optimizer,
    scheduler, RNG): the last step and the weights are those of the uninterrupted run."""
    plain_losses, plain, _ = plain_runs()
    out = tmp_path / "sharded"
    _run(out, 2, 2, "full_shard", True, stop_after=2)
    ckpt = out / "resume" / "checkpoint-2"
    # Our gathered trained parameters beside accelerate's shards: a complete checkpoint.
    assert (ckpt / "trained.safetensors").is_file() and (ckpt / "pytorch_model_fsdp_0").is_dir()
    _, sharded, printed = _run(out, 2, 2, "full_shard", True)
    assert "[step 3/3]" in printed and "[step 1/3]" not in printed  # resumed at step 3
    last = [r for r in map(json.loads, (out / "resume" / "log.jsonl").read_text().splitlines())
            if r.get("step") == 3 and "loss" in r]
    assert len(last) == 1
    assert last[0]["loss"] == pytest.approx(plain_losses[2][0], rel=LOSS_RTOL)
    for name in plain:
        torch.testing.assert_close(sharded[name], plain[name], atol=WEIGHT_ATOL, rtol=0)


def test_fsdp_in_one_process_is_a_clear_error(tiny_tok, tmp_path):
    from tests.conftest import make_icae

    from icae.training.trainer import train

    model = make_icae(tiny_tok)
    t = TrainingConfig(fsdp="full_shard", max_steps=1, progress=False)
    with pytest.raises(ValueError, match=r"^pretrain\.fsdp='full_shard': sharding needs "
                                         r"several processes"):
        train(model, [], [], t, output_dir=tmp_path / "out", resume_dir=tmp_path / "r",
              seed=0, config_text="")
