"""``python -m icae try`` on a tiny random model and checkpoint (no downloads)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog. A memory slot holds a summary of "
        "the context. Alice was beginning to get very tired of sitting by her sister.")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from icae.config import dump_config, load_config
    from icae.models import build_model
    from icae.models.checkpoint import save_checkpoint
    from icae.testing import save_tiny_model_dir

    root = tmp_path_factory.mktemp("try")
    model_dir = save_tiny_model_dir(root / "model", hidden_size=32, layers=1)
    cfg = load_config(None, [f"model.model_dir={model_dir}", f"model.base_model={model_dir}",
                             "model.mem_size=4", "model.mean_compression_rate=4",
                             "model.lora_r=4", "model.lora_alpha=8",
                             "model.position_layout=epl", "model.dtype=float32",
                             "model.attn_implementation=sdpa"])
    model = build_model(cfg.model)
    return save_checkpoint(model, root / "ckpt", config_text=dump_config(cfg)), cfg


def run_try(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "icae", "try", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO)


def test_reconstruct_from_stdin_reports_rate_and_timings(checkpoint, tmp_path):
    ckpt, cfg = checkpoint
    proc = run_try("--checkpoint", str(ckpt), "--max-new-tokens", "12", "--json",
                   str(tmp_path / "r.json"), stdin=TEXT)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "r.json").read_text())
    assert info["mode"] == "reconstruct" and info["source"] == "stdin"
    # The checkpoint's own config (mem 4, rate 4) decides the slots, not the defaults.
    from icae.models import build_model

    n = info["text_tokens"]
    assert info["mem_size"] == 4 and info["configured_rate"] == 4
    assert info["memory_slots"] == build_model(cfg.model).num_memory_slots(n) < n
    assert info["compression_rate"] == pytest.approx(n / info["memory_slots"])
    assert info["generated_tokens"] <= 12 and info["compress_s"] > 0 and info["generate_s"] > 0
    assert f"{n} tokens -> {info['memory_slots']} memory slots" in proc.stderr
    assert "compress " in proc.stderr and "tokens/s" in proc.stderr and "BLEU-1" in proc.stderr
    assert proc.stdout.rstrip("\n") == info["output"]


def test_question_from_file(checkpoint, tmp_path):
    ckpt, _ = checkpoint
    src = tmp_path / "text.txt"
    src.write_text(TEXT)
    proc = run_try("--checkpoint", str(ckpt), "--input", str(src), "--question",
                   "Who was tired?", "--max-new-tokens", "5", "--json", str(tmp_path / "q.json"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "q.json").read_text())
    assert info["mode"] == "question" and info["question"] == "Who was tired?"
    assert info["source"] == str(src) and info["generated_tokens"] <= 5


def test_memory_alone_and_errors(checkpoint, tmp_path):
    from icae.models import build_model
    from icae.try_model import try_text

    ckpt, cfg = checkpoint
    model = build_model(cfg.model, checkpoint=str(ckpt)).eval()
    seen = {}
    original = model.generate

    def spy(prompts, **kw):
        enc = model.encode(prompts[0])
        seen["decoder_ids"] = enc.input_ids
        return original(prompts, **kw)

    model.generate = spy
    result = try_text(model, TEXT, max_new_tokens=3)
    ids = model.prompts.encode(TEXT)
    # The decoder reads placeholders for the memory, not one token of the text itself.
    assert seen["decoder_ids"].count(model.placeholder_id) == result["memory_slots"]
    assert len(seen["decoder_ids"]) < len(ids)

    with pytest.raises(ValueError, match="min_compress_len"):
        model.cfg.min_compress_len = 10_000
        try_text(model, TEXT)
    proc = run_try("--checkpoint", str(ckpt), "--input", str(tmp_path / "missing.txt"))
    assert proc.returncode == 1 and "no such file" in proc.stderr
    proc = run_try("--checkpoint", str(ckpt), stdin="")
    assert proc.returncode == 1 and "empty" in proc.stderr


def test_question_prompt_uses_only_trained_markers(checkpoint):
    """A pre-trained-only checkpoint never trained [FT]: its question prompt carries [LM]
    (as in evaluation); one that never trained [AE] cannot reconstruct."""
    from icae.models import build_model
    from icae.try_model import try_text

    ckpt, cfg = checkpoint
    # A copy: another test lowers min_compress_len on the module's shared config.
    model = build_model(copy.deepcopy(cfg.model), checkpoint=str(ckpt)).eval()
    model.cfg.min_compress_len = 1
    seen = {}
    original = model.generate

    def spy(prompts, **kw):
        seen["ids"] = model.encode(prompts[0]).input_ids
        return original(prompts, **kw)

    model.generate = spy
    try_text(model, TEXT, question="Who?", max_new_tokens=2, trained_markers={"ae", "lm"})
    assert model.marker_ids["lm"] in seen["ids"] and model.marker_ids["ft"] not in seen["ids"]
    try_text(model, TEXT, question="Who?", max_new_tokens=2)
    assert model.marker_ids["ft"] in seen["ids"]
    with pytest.raises(ValueError, match=r"never trained the \[AE\]"):
        try_text(model, TEXT, max_new_tokens=2, trained_markers={"lm"})
