"""The command line turns every expected failure into one line naming the file and what
to do: no traceback."""

import gzip
import json

import pytest

from icae.cli import main
from tests.test_training import cfg_for, workdir  # noqa: F401 (fixture)


def _fails(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"icae {argv[0]}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _base(workdir, tmp_path):
    return [f"model.model_dir={workdir / 'model'}", f"model.base_model={workdir / 'model'}",
            "model.mem_size=4", "model.mean_compression_rate=2", "model.lora_r=4",
            "model.lora_alpha=8", "model.lora_dropout=0.0", "model.max_encoder_tokens=64",
            f"data.prepared_dir={workdir / 'prepared'}", "data.pretrain.min_len=24",
            f"output_root={tmp_path}", "run_name=t", "pretrain.max_steps=3", "pretrain.progress=false",
            "pretrain.save_steps=1"]


def test_non_finite_loss_is_one_line(workdir, tmp_path, capsys, monkeypatch):
    from icae.models.icae import ICAE

    real = ICAE.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ICAE, "forward", flaky)
    line = _fails(capsys, ["pretrain", *_base(workdir, tmp_path)])
    assert "non-finite training loss (nan) at step 2" in line
    assert "--resume-from" in line and "checkpoint-1" in line


def test_truncated_gz_source_is_one_line(workdir, tmp_path, capsys):
    full = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n"
                                  for i in range(300)))
    src = tmp_path / "docs.jsonl.gz"
    src.write_bytes(full[: len(full) // 2])
    line = _fails(capsys, ["prepare-data", *_base(workdir, tmp_path),
                           f"data.prepared_dir={tmp_path / 'prep'}", "data.build=[pretrain]",
                           "data.progress=false", "data.pretrain.min_len=8",
                           f"data.pretrain.sources=[{{path: {src}}}]"])
    assert "docs.jsonl.gz:" in line and "truncated or corrupt compressed file" in line


def test_corrupt_checkpoint_is_one_line(workdir, tmp_path, capsys):
    from icae.models import build_model
    from icae.models.checkpoint import save_checkpoint

    cfg = cfg_for(workdir, tmp_path)
    ckpt = save_checkpoint(build_model(cfg.model), tmp_path / "ckpt")
    (ckpt / "trained.safetensors").write_bytes(b"\x00" * 12)
    line = _fails(capsys, ["evaluate", *_base(workdir, tmp_path), "evaluation.task=qa",
                           f"evaluation.checkpoint={ckpt}"])
    assert "trained.safetensors: cannot read the weights" in line


def test_os_errors_name_their_type_and_file(tmp_path, capsys, monkeypatch):
    import icae.prepare_model as pm

    def denied(cfg, args=None):
        raise PermissionError(13, "Permission denied", str(tmp_path / "models"))

    monkeypatch.setattr(pm, "run", denied)
    line = _fails(capsys, ["prepare-model"])
    assert "PermissionError" in line and str(tmp_path / "models") in line


@pytest.mark.parametrize("steps, words", [("0", "0 is not at least 1"),
                                          ("five", "'five' is not a whole number")])
def test_benchmark_steps_must_be_a_positive_count(capsys, steps, words):
    # --steps 0 divided by zero deep in the timing; now argparse names the option.
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--steps", steps])
    assert exc.value.code == 2
    assert f"argument --steps: {words}" in capsys.readouterr().err
