"""wandb tracking of training runs (icae.training.tracking) with a stand-in wandb module:
wandb itself is optional and not needed by the test suite."""

from __future__ import annotations

import sys
import types

import pytest

from icae.config import load_config
from icae.training import tracking


class FakeRun:
    def __init__(self, **kw):
        self.kw = kw
        self.finished = []

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []
    module = types.ModuleType("wandb")

    def init(**kw):
        calls.append(FakeRun(**kw))
        return calls[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT",
                "ICAE_WANDB_NAME", "ICAE_WANDB_GROUP", "ICAE_WANDB_JOB_TYPE",
                "ICAE_WANDB_TAGS", "RANK"):
        monkeypatch.delenv(key, raising=False)
    return calls


def cfg(tmp_path, *extra):
    return load_config(None, [f"output_root={tmp_path}", "run_name=exp", "model.mem_size=32",
                              "model.mean_compression_rate=4", "model.position_layout=epl",
                              "pretrain.report_to=[wandb]", "finetune.report_to=[wandb]",
                              *extra])


def test_offline_without_key_names_config_and_resume(fake_wandb, tmp_path, monkeypatch):
    c = cfg(tmp_path)
    resume = tmp_path / "work" / "pretrain-abc"
    run = tracking.start_run(c, "pretrain", resume)
    kw = run.kw
    assert kw["mode"] == "offline"
    assert kw["name"] == "exp/m32-r4-epl-s42/pretrain" and kw["group"] == "exp/m32-r4-epl-s42"
    assert kw["job_type"] == "pretrain" and "m32-r4-epl-s42" in kw["tags"]
    assert kw["config"]["icae"]["mem_size"] == 32
    assert kw["config"]["icae"]["position_layout"] == "epl"
    assert kw["config"]["icae"]["mean_compression_rate"] == 4
    assert kw["config"]["experiment"]["model"]["mem_size"] == 32
    assert kw["dir"] == str(tmp_path / "exp" / "wandb") and kw["resume"] == "allow"
    # The retried job (same resume folder) continues the same run; a new folder does not.
    again = tracking.start_run(c, "pretrain", resume)
    assert again.kw["id"] == kw["id"]
    other = tracking.start_run(c, "pretrain", tmp_path / "work" / "pretrain-def")
    assert other.kw["id"] != kw["id"]
    # With a key it goes online; an explicit WANDB_MODE wins.
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert tracking.start_run(c, "pretrain", resume).kw["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.start_run(c, "pretrain", resume).kw["mode"] == "disabled"


def test_workflow_names_win_and_finetune_identity(fake_wandb, tmp_path, monkeypatch):
    c = cfg(tmp_path, "finetune.dataset=repoqa", "model.model_type=llm")
    run = tracking.start_run(c, "finetune", tmp_path / "r")
    assert run.kw["name"] == "exp/llm-s42/finetune-repoqa-llm"
    assert "repoqa" in run.kw["tags"] and run.kw["config"]["icae"]["dataset"] == "repoqa"
    assert "mem_size" not in run.kw["config"]["icae"]  # not an ICAE setting of the LLM
    monkeypatch.setenv("ICAE_WANDB_NAME", "exp/branch/job")
    monkeypatch.setenv("ICAE_WANDB_TAGS", "a,b")
    run = tracking.start_run(c, "finetune", tmp_path / "r")
    assert run.kw["name"] == "exp/branch/job" and run.kw["tags"] == ["a", "b"]


def test_optional_and_rank_zero_only(tmp_path, monkeypatch, fake_wandb):
    assert tracking.start_run(load_config(None, [f"output_root={tmp_path}"]), "pretrain",
                              tmp_path / "r") is None  # not asked for
    monkeypatch.setenv("RANK", "1")
    assert tracking.start_run(cfg(tmp_path), "pretrain", tmp_path / "r") is None
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ValueError, match="pretrain.report_to: wandb is not installed"):
        tracking.start_run(cfg(tmp_path), "pretrain", tmp_path / "r")
