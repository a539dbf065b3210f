"""`icae benchmark`'s FLOP count (the MFU it reports) against a count by hand."""

from __future__ import annotations

from tests.conftest import make_icae


def test_step_flops_counts_encoder_decoder_and_labelled_head(tiny_tok):
    from icae.models.objectives import Objective
    from icae.training.benchmark import step_flops

    model = make_icae(tiny_tok, mem_size=4, rate=2.0)
    ctx = list(range(10, 18))  # 8 tokens -> 4 slots at rate 2
    example = model.encode(model.prompts.autoencoding(ctx), task=Objective.AE)
    cfg = model.base.config
    n_layer_params = sum(p.numel() for n, p in model.base.named_parameters()
                         if ".layers." in n or n.endswith("norm.weight"))
    width = cfg.num_attention_heads * (getattr(cfg, "head_dim", None)
                                       or cfg.hidden_size // cfg.num_attention_heads)
    enc = len(ctx) + 4 + int(model.encoder_bos is not None)
    dec = len(example.input_ids)
    head = model.base.get_output_embeddings().weight.numel()

    def pass_flops(t):
        return 2 * n_layer_params * t + 2 * cfg.num_hidden_layers * width * t * t

    expected = 3 * (pass_flops(enc) + pass_flops(dec) + 2 * head * example.num_target_tokens)
    assert step_flops(model, [example]) == expected
    assert step_flops(model, [example, example]) == 2 * expected


def test_gpu_benchmark_profiles_the_timed_steps(tiny_tok, tmp_path):
    # benchmarks/gpu_benchmark.py --profile: the operator table of the timed steps headed by
    # their wall clock (the two together tell host-bound from kernel-bound).
    import json
    import subprocess
    import sys
    from pathlib import Path

    tiny_tok.save_pretrained(tmp_path / "tok")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_benchmark.py"), "--shape", "tiny",
                    "--tokenizer", str(tmp_path / "tok"), "--mem-size", "4", "--context", "16",
                    "--batch", "2", "--steps", "2", "--modes", "ours", "--lora-r", "4",
                    "--profile", str(tmp_path / "prof"), "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True)
    table = (tmp_path / "prof" / "profile-ours.txt").read_text()
    first = table.splitlines()[0]
    assert first.startswith("wall ") and "Self CPU time total" in table
    assert "aten::mm" in table or "aten::addmm" in table or "aten::linear" in table
    assert json.loads(out.read_text())[0]["mode"] == "ours"
