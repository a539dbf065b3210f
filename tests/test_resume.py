"""Resume the hostile way: a kill during a save, a rerun with another config, a
non-finite gradient, and an explicit resume with lower optimisation settings."""

import argparse
import json
import math
import shutil

import pytest
import torch

from icae.models import build_model
from tests.test_training import _run, _trained, cfg_for, workdir  # noqa: F401 (fixture)


def test_a_checkpoint_cut_off_during_its_save_is_skipped(workdir, tmp_path):
    # Kill -9 while checkpoint-4 was written: it has weights but no trainer_state.json.
    common = dict(finetune__max_steps=6, finetune__save_steps=2,
                  finetune__per_device_train_batch_size=2)
    straight, _ = _run(workdir, tmp_path / "a", **common)
    _run(workdir, tmp_path / "b", stop=4, **common)
    half = tmp_path / "b" / "resume" / "checkpoint-4"
    assert half.is_dir()
    (half / "trainer_state.json").unlink()
    resumed, meta = _run(workdir, tmp_path / "b", **common)  # resumes from checkpoint-2
    assert meta["global_step"] == 6
    assert (tmp_path / "b" / "resume" / "checkpoint-4.incomplete").is_dir()
    a, b = _trained(straight), _trained(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_only_marked_checkpoints_count_as_complete(tmp_path):
    from icae.training.resume import last_complete_checkpoint, mark_complete

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("trained.safetensors", "checkpoint.json", "trainer_state.json"):
            (folder / name).write_text("x")
    mark_complete(tmp_path / "checkpoint-2", 2)
    # checkpoint-4 has every file but was never marked: the marker is written last
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


def _args(**kw):
    return argparse.Namespace(fresh=kw.get("fresh", False), resume_from=kw.get("resume_from"))


def test_rerun_with_another_config_refuses_naming_the_keys(workdir, tmp_path):
    from icae.models.checkpoint import read_meta
    from icae.training.resume import ResumeError
    from icae.training.run import pretrain

    pretrain(cfg_for(workdir, tmp_path), _args())
    final = tmp_path / "t" / "pretrain"
    before = (final / "trained.safetensors").read_bytes()
    pretrain(cfg_for(workdir, tmp_path), _args())  # the same config: fine
    with pytest.raises(ResumeError, match=r"pretrain.learning_rate: 0.01 there, 0.005 now.*"
                                          r"--fresh.*--resume-from .*checkpoint-2"):
        pretrain(cfg_for(workdir, tmp_path, "pretrain.learning_rate=5e-3"), _args())
    with pytest.raises(ResumeError, match=r"model.position_layout: \"epl\" there, \"linspace\""):
        pretrain(cfg_for(workdir, tmp_path, "model.position_layout=linspace"), _args())
    with pytest.raises(ResumeError, match=r"data.pretrain.min_len"):
        pretrain(cfg_for(workdir, tmp_path, "data.pretrain.min_len=8"), _args())
    assert (final / "trained.safetensors").read_bytes() == before  # nothing relabelled
    # Logging-only keys do not count.
    pretrain(cfg_for(workdir, tmp_path, "pretrain.logging_steps=2", "pretrain.save_steps=7",
                     "pretrain.report_to=[none]"), _args())
    # Without the resume folder the final checkpoint still guards itself.
    shutil.rmtree(tmp_path / "t" / "pretrain.resume")
    with pytest.raises(ResumeError, match="already holds a final checkpoint of a different "
                                          "config.*pretrain.learning_rate"):
        pretrain(cfg_for(workdir, tmp_path, "pretrain.learning_rate=5e-3"), _args())
    # --fresh starts over and labels the new weights with the new config.
    pretrain(cfg_for(workdir, tmp_path, "pretrain.learning_rate=5e-3"), _args(fresh=True))
    meta = read_meta(final)
    assert meta["run_config"]["pretrain"]["learning_rate"] == 5e-3
    assert (final / "trained.safetensors").read_bytes() != before


def test_tracked_config_follows_the_dataclasses(workdir, tmp_path):
    import dataclasses

    from icae.config import TrainingConfig
    from icae.training.resume import NOT_TRACKED, tracked_config

    cfg = cfg_for(workdir, tmp_path)
    tracked = tracked_config(cfg, "finetune")
    for f in dataclasses.fields(TrainingConfig):
        assert (f.name in tracked["finetune"]) == (f.name not in NOT_TRACKED), f.name
    assert "mem_size" in tracked["model"] and "model_dir" not in tracked["model"]
    assert set(tracked["data"]) == {"prepared_dir", "skip_bad_lines", "squad"}
    # keys the workflow declares untracked are not compared either
    cfg.workflow = {"untracked_keys": ["gradient_checkpointing"]}
    assert "gradient_checkpointing" not in tracked_config(cfg, "finetune")["finetune"]


def test_new_config_fields_are_tracked_unless_weight_neutral(workdir, tmp_path):
    """Fields added since the check was written are compared without listing them; the
    wall-clock stop and the separation diagnostic cannot change the weights."""
    from icae.training.resume import tracked_config

    tracked = tracked_config(cfg_for(workdir, tmp_path), "pretrain")
    assert {"ae_only_examples", "lm_ratio_ramp_examples"} <= set(tracked["data"]["pretrain"])
    assert "embedding_learning_rate" in tracked["pretrain"]
    assert "slot_rule" in tracked["model"]
    assert "max_train_seconds" not in tracked["pretrain"]
    assert "separation_warning_examples" not in tracked["pretrain"]


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_nonfinite_gradient_keeps_the_state_before_it_and_resume_takes_lower_lr(
        workdir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from icae.models.icae import ICAE
    from icae.training.resume import NONFINITE, ResumePolicy, last_complete_checkpoint
    from icae.training.trainer import NonFiniteLossError, train
    from icae.training.examples import encode_records, load_records

    real = ICAE.forward
    calls = {"n": 0}

    def exploding(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:  # a finite loss whose gradient is not
            out["loss"] = _InfGrad.apply(out["loss"])
        return out

    common = dict(finetune__max_steps=5, finetune__save_steps=1, finetune__warmup_steps=0)
    monkeypatch.setattr(ICAE, "forward", exploding)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient .* at step 3; stopped "
                                                 r"before the optimizer step.*--resume-from"
                                                 r".*\w+\.cudnn_attention=false"):
        _run(workdir, tmp_path, **common)
    monkeypatch.setattr(ICAE, "forward", real)
    ckpt = last_complete_checkpoint(tmp_path / "resume")
    assert ckpt.endswith("checkpoint-2")
    assert json.loads((tmp_path / "resume" / "checkpoint-2" / NONFINITE).read_text())[
        "at_step"] == 3
    for name, t in load_file(f"{ckpt}/trained.safetensors").items():
        assert torch.isfinite(t).all(), name

    # Resume from it with a 100x lower learning rate, on purpose: it takes effect.
    cfg = cfg_for(workdir, tmp_path, "finetune.learning_rate=1e-4", "finetune.max_steps=5",
                  "finetune.save_steps=1")
    model = build_model(cfg.model)
    examples, _ = encode_records(model, cfg, "squad", load_records(cfg, "squad", "train"), 512)
    meta = train(model, examples, [], cfg.finetune, output_dir=tmp_path / "out",
                 resume_dir=tmp_path / "resume", seed=cfg.seed, config_text="",
                 resume_policy=ResumePolicy(resume_from=ckpt, stage="finetune"))
    assert meta["global_step"] == 5
    rows = [json.loads(x) for x in (tmp_path / "resume" / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
    assert lrs[1] > 1e-3  # the old run's schedule (1e-2)
    assert all(lrs[s] <= 1e-4 for s in lrs if s >= 3), lrs
    assert all(torch.isfinite(t).all() for t in _trained(model).values())
    assert math.isfinite(meta["train_loss"])


def test_sigterm_finishes_the_step_saves_and_restores_the_handler():
    import os
    import signal

    from transformers import TrainerControl, TrainerState

    from icae.training.trainer import StopOnSignal

    before = signal.getsignal(signal.SIGTERM)
    cb, state, control = StopOnSignal(), TrainerState(), TrainerControl()
    state.global_step = 3
    cb.on_train_begin(None, state, control)
    cb.on_step_end(None, state, control)
    assert not control.should_training_stop  # no signal yet
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only flags
    cb.on_step_end(None, state, control)
    assert control.should_training_stop and control.should_save
    # a second signal would kill: the handler is back to the previous one at once
    assert signal.getsignal(signal.SIGTERM) is before
    cb.on_train_end(None, state, control)
    assert signal.getsignal(signal.SIGTERM) is before
