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
