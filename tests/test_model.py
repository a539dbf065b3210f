"""ICAE and the plain-LLM baseline on tiny random models."""

import math

import pytest
import torch

from icae.models import positions as P
from icae.models.base import collate
from icae.models.templates import Context, Marker, Text
from tests.conftest import make_icae

ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


def _text_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _loss_and_grads(model, batch):
    """One forward + backward from zeroed gradients: the loss and every gradient."""
    model.zero_grad()
    out = model(**batch)
    out["loss"].backward()
    return out["loss"].item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                if p.grad is not None}


def _assert_same_grads(a, b, atol, rtol):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=rtol)


@pytest.mark.parametrize("length, m, rate", [(1, 4, 2), (8, 4, 2), (9, 4, 2), (50, 4, 2),
                                             (50, 8, 1), (100, 2, 4), (33, 16, 1.5)])
def test_memory_shape(tiny_tok, length, m, rate):
    model = make_icae(tiny_tok, mem_size=m, rate=rate)
    ctx = list(range(10, 10 + length))
    mem, mask = model.compress([ctx])
    k = -(-length // int(m * rate)) if float(m * rate).is_integer() else None
    segs = P.segment_bounds(length, m, rate)
    if k is not None:
        assert len(segs) == k
    # proportional rule: min(m, ceil(n / rate)) slots per segment, never more than tokens
    slots = sum(min(m, math.ceil(n / rate))
                for _, n in segs)
    assert slots <= length
    assert mem.shape == (1, slots, model.base.config.hidden_size)
    assert int(mask.sum()) == slots == model.num_memory_slots(length)


@pytest.mark.parametrize("layout", ["default", "linspace", "epl"])
def test_batched_compression_equals_per_example(tiny_tok, layout):
    # float32 on CPU: padding and chunking change summation order only; 1e-5 absolute.
    model = make_icae(tiny_tok, layout=layout, mem_size=4, rate=2)
    model.eval()
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (7, 23, 40, 3)]
    starts = [1, 5, 2, 9]
    with torch.no_grad():
        together = model.compress_flat(contexts, starts)
        alone = torch.cat([model.compress_flat([c], [s]) for c, s in zip(contexts, starts)])
        model.cfg.max_encoder_tokens = 20  # forces one segment per chunk
        chunked = model.compress_flat(contexts, starts)
    assert together.shape == alone.shape
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, alone, atol=1e-5, rtol=0)


def test_memory_scale_embedding_rescales_every_vector_and_keeps_gradients(tiny_tok):
    raw = make_icae(tiny_tok, mem_size=4, rate=2)
    scaled = make_icae(tiny_tok, mem_size=4, rate=2, memory_scale="embedding")
    ctx = list(range(10, 40))
    emb_norm = scaled.base.get_input_embeddings().weight.norm(dim=1).mean()
    mem_raw, mem = raw.compress_flat([ctx]), scaled.compress_flat([ctx])
    torch.testing.assert_close(mem.norm(dim=-1), emb_norm.expand(mem.shape[0]))
    # same weights and seed: the same directions, another length
    torch.testing.assert_close(mem / mem.norm(dim=-1, keepdim=True),
                               mem_raw / mem_raw.norm(dim=-1, keepdim=True))
    assert not torch.allclose(mem_raw.norm(dim=-1), mem.norm(dim=-1))
    batch = collate([scaled.encode(scaled.prompts.autoencoding(ctx), task=0)], scaled.pad_id)
    scaled(**batch)["loss"].backward()
    enc_grads = [p.grad for n, p in scaled.named_parameters() if "lora_B" in n and "encoder" in n]
    assert enc_grads and any(float(g.abs().sum()) > 0 for g in enc_grads)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_and_cached_generation(tiny_tok, arch):
    model = make_icae(tiny_tok, arch=arch)
    pb = model.prompts
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    batch = collate([model.encode(pb.autoencoding(ctx), task=0),
                     model.encode(pb.language_modelling(ctx[:9], ctx[9:]), task=1)], model.pad_id)
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and "ae_loss" in out and "lm_loss" in out
    out["loss"].backward()
    assert model.extra_embeddings.grad is not None
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    # decoder is frozen: base weights get no gradient
    assert all(p.grad is None for n, p in model.named_parameters()
               if "lora_" not in n and n != "extra_embeddings")

    prompts = [pb.autoencoding_prompt(ctx), pb.chat([{"role": "user", "content": "hi"}])]
    model.eval()
    cached = model.generate(prompts, max_new_tokens=8, use_cache=True)
    uncached = model.generate(prompts, max_new_tokens=8, use_cache=False)
    assert cached == uncached
    singles = [model.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert singles == cached  # left padding changes nothing


def test_llm_baseline_generation_and_loss(tiny_tok):
    model = make_icae(tiny_tok, model_type="llm")
    pb = model.prompts
    ctx = _text_ids(tiny_tok, "A memory slot holds a summary of the context.")
    pieces = pb.chat([{"role": "user", "content": "Q: what?"}], answer="a summary")
    enc = model.encode([Context(tuple(ctx)), Marker("ft")] + pieces)
    assert enc.input_ids[: len(ctx)] == ctx  # the baseline reads the context as text
    out = model(**collate([enc], model.pad_id))
    assert torch.isfinite(out["loss"])
    prompts = [[Context(tuple(ctx))] + pb.chat([{"role": "user", "content": "hi"}]),
               pb.chat([{"role": "user", "content": "the fox"}])]
    model.eval()
    assert model.generate(prompts, 6, use_cache=True) == model.generate(prompts, 6, use_cache=False)


def test_exactly_one_copy_of_the_base_weights(tiny_tok):
    from icae.testing import tiny_model

    model = make_icae(tiny_tok, train_decoder=True)
    reference = tiny_model("llama", vocab_size=len(tiny_tok))
    base_numel = sum(p.numel() for p in reference.parameters())
    frozen = [p for n, p in model.named_parameters()
              if "lora_" not in n and n != "extra_embeddings"]
    assert sum(p.numel() for p in frozen) == base_numel
    storages = {p.untyped_storage().data_ptr() for p in frozen}
    assert len(storages) == len(frozen)
    from transformers import PreTrainedModel
    # one causal LM (its inner transformer stack is a PreTrainedModel too, inside it)
    assert sum(type(m).__name__.endswith("ForCausalLM") for m in model.modules()) == 1
    assert sum(isinstance(m, PreTrainedModel) for m in model.modules()) == 2
    # two adapters on the one copy, both trained
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".encoder." in n for n in names) and any(".decoder." in n for n in names)


def test_train_decoder_uses_its_own_adapter(tiny_tok):
    model = make_icae(tiny_tok, train_decoder=True)
    pb = model.prompts
    ctx = _text_ids(tiny_tok, "Compression turns long contexts into a few vectors.")
    out = model(**collate([model.encode(pb.autoencoding(ctx), task=0)], model.pad_id))
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert any(".decoder." in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any(".encoder." in n and g is not None for n, g in grads.items())


def test_a_few_steps_drive_the_autoencoding_loss_down(tiny_tok):
    torch.manual_seed(0)
    model = make_icae(tiny_tok, mem_size=4, rate=2)
    ctx = _text_ids(tiny_tok, "It is a truth universally acknowledged, that a single man")
    batch = collate([model.encode(model.prompts.autoencoding(ctx), task=0)], model.pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # A frozen random decoder caps how low this can go (about 4.5 nats from 6.8 here);
    # a drop of 1.5 nats is far outside step-to-step noise.
    assert losses[-1] < losses[0] - 1.5, losses


def test_placeholder_count_mismatch_is_an_error(tiny_tok):
    model = make_icae(tiny_tok)
    enc = model.encode([Context(tuple(range(10, 30))), Text((1, 2))])
    enc.input_ids.append(model.placeholder_id)
    enc.labels.append(-100)
    enc.position_ids.append(0)
    with pytest.raises(ValueError, match="memory placeholders"):
        model(**collate([enc], model.pad_id))


def test_host_built_batch_gives_the_same_loss_and_gradients_as_the_device_path(tiny_tok):
    # model.collate hands the encoder its chunks and the decoder its placeholder positions
    # (index_select / index_copy, no device sync); the plain collate makes the model find
    # them itself (boolean masks, masked_scatter). Several chunks, lengths and starts.
    model = make_icae(tiny_tok, mem_size=4, rate=2, seed=7)
    model.train()
    model.cfg.max_encoder_tokens = 24
    g = torch.Generator().manual_seed(1)
    encoded = []
    for n in (30, 9, 17, 3):
        ctx = torch.randint(5, 300, (n,), generator=g).tolist()
        encoded.append(model.encode(model.prompts.autoencoding(ctx), task=0))
    results = []
    for batch in (model.collate(encoded), collate(encoded, model.pad_id)):
        results.append(_loss_and_grads(model, batch))
    assert "memory_index" in model.collate(encoded)
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    _assert_same_grads(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", ["epl", "linspace"])
def test_right_padded_training_batches_run_causal_attention_without_a_mask(tiny_tok, layout,
                                                                          monkeypatch):
    """Training batches and encoder chunks are right-padded and run SDPA with its causal
    flag and no mask (flash kernels, no device read); loss and gradients equal those of
    the left-padded batch through transformers' own padding mask, for EPL's position ids,
    which jump back (an absent mask must not turn them into "packed sequences")."""
    import transformers.integrations.sdpa_attention as sdpa

    model = make_icae(tiny_tok, layout=layout, mem_size=4, rate=2)
    g = torch.Generator().manual_seed(3)
    encoded = [model.encode(model.prompts.autoencoding(
        torch.randint(5, 300, (n,), generator=g).tolist()), task=0) for n in (30, 9, 17)]
    batch = model.collate(encoded)
    assert batch["right_padded"] is True
    assert (batch["attention_mask"][:, 0] == 1).all() and (batch["attention_mask"] == 0).any()
    seen = []
    real = sdpa.sdpa_attention_forward

    def spy(module, q, k, v, attention_mask, **kw):
        seen.append((attention_mask is None, kw.get("is_causal")))
        return real(module, q, k, v, attention_mask, **kw)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    results = []
    for b in (batch, collate(encoded, model.pad_id)):
        seen.clear()
        results.append((*_loss_and_grads(model, b), list(seen)))
    layers = model.base.config.num_hidden_layers
    # right-padded: every encoder and decoder layer without a mask, causal
    assert results[0][2] == [(True, True)] * (2 * layers)
    # left-padded (generation's layout): only the encoder; the decoder went through
    # transformers' registered SDPA with its padding mask
    assert results[1][2] == [(True, True)] * layers
    assert model.base.config._attn_implementation == "sdpa"  # switched back
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    _assert_same_grads(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_extra_embedding_gradient_sums_over_the_positions_that_use_each_row(tiny_tok):
    model = make_icae(tiny_tok, mem_size=4, rate=2)
    V = model.vocab_size
    ids = torch.tensor([[5, V, V + 1, 7, V], [V + 4, 9, 11, V + 1, V + 2]])
    upstream = torch.randn(*ids.shape, model.extra_embeddings.shape[1])
    embeds = model._embed_with_extra(ids)
    (embeds * upstream).sum().backward()
    expected = torch.zeros_like(model.extra_embeddings)
    for (r, c), i in zip(torch.cartesian_prod(torch.arange(2), torch.arange(5)).tolist(),
                         ids.reshape(-1).tolist()):
        if i >= V:
            expected[i - V] += upstream[r, c]
            torch.testing.assert_close(embeds[r, c], model.extra_embeddings[i - V])
        else:
            torch.testing.assert_close(embeds[r, c],
                                       model.base.get_input_embeddings().weight[i])
    torch.testing.assert_close(model.extra_embeddings.grad, expected)


@pytest.mark.parametrize("train_decoder", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_tok, train_decoder):
    # Recomputation must see each pass's adapter state (encoder: LoRA on; decoder: off or
    # its own adapter). float32: gradients agree to 1e-5.
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    grads = []
    for checkpointing in (False, True):
        model = make_icae(tiny_tok, train_decoder=train_decoder, seed=3)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        batch = collate([model.encode(model.prompts.autoencoding(ctx), task=0)], model.pad_id)
        grads.append(_loss_and_grads(model, batch)[1])
    assert len(grads[0]) > 1
    _assert_same_grads(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_chunked_loss_equals_the_plain_loss(tiny_tok):
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    results = []
    for chunk in (10_000, 7):
        model = make_icae(tiny_tok, seed=5)
        model.loss_chunk_tokens = chunk
        batch = collate([model.encode(model.prompts.autoencoding(ctx), task=0)], model.pad_id)
        out = model(**batch)
        out["loss"].backward()
        results.append((out["loss"].item(), model.extra_embeddings.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("training_batch", [False, True])
def test_compiled_layers_give_the_same_loss_and_gradients(tiny_tok, training_batch):
    # pretrain.compile_layers: every decoder block compiled in place, one graph shared by the
    # blocks and by the encoder (adapter on) and decoder (its own adapter) passes; the
    # adapter switch and the attention switch (the training batch's causal attention, the
    # padding mask of generation's layout) must reach the compiled code (a stale guard would
    # silently run the wrong one and change the loss).
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    results = []
    for compiled in (False, True):
        model = make_icae(tiny_tok, train_decoder=True, seed=3)
        model.train()
        model.loss_chunk_tokens = 5  # several chunks, the last one shorter
        if compiled:
            assert model.compile_layers() == 2
        encoded = [model.encode(model.prompts.autoencoding(ctx), task=0),
                   model.encode(model.prompts.autoencoding(ctx[:7]), task=0)]
        batch = model.collate(encoded) if training_batch else collate(encoded, model.pad_id)
        results.append(_loss_and_grads(model, batch))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    _assert_same_grads(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_periodic_ae_decoding_bypasses_compiled_layers(tiny_tok):
    # The AE BLEU callback decodes eagerly: through compiled blocks every new KV-cache
    # length is another graph (dynamo's recompile limit was hit on a GPU), while eager
    # decoding gives the same tokens.
    from icae.training.trainer import AEBleuCallback

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = make_icae(tiny_tok, train_decoder=True, seed=3)
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    eager_tokens = model.generate([model.prompts.autoencoding_prompt(ctx)], max_new_tokens=4)
    torch._dynamo.reset()
    model.compile_layers(backend=counting_backend)
    callback = AEBleuCallback(model, [ctx], max_new_tokens=4)
    metrics, state = {}, type("State", (), {"log_history": [], "global_step": 1})()
    callback.on_evaluate(None, state, None, metrics=metrics)
    assert "eval_ae_bleu1" in metrics and not graphs
    compiled_tokens = model.generate([model.prompts.autoencoding_prompt(ctx)], max_new_tokens=4)
    assert graphs, "generate outside the callback does reach the compiled blocks"
    assert compiled_tokens == eager_tokens


def test_the_fused_loss_equals_the_recomputed_chunks(tiny_tok, monkeypatch):
    # A frozen plain LM head takes icae.models.linear_ce; a LoRA-wrapped or trainable one
    # the checkpointed chunks. Both must give the same loss and gradients.
    ctx = _text_ids(tiny_tok, "The quick brown fox jumps over the lazy dog. Alice was")
    results = []
    for fused in (True, False):
        model = make_icae(tiny_tok, train_decoder=True, seed=5)
        model.train()
        model.loss_chunk_tokens = 6
        assert model._fused_loss_applies()
        if not fused:
            monkeypatch.setattr(type(model), "_fused_loss_applies", lambda self: False)
        encoded = [model.encode(model.prompts.autoencoding(ctx), task=0),
                   model.encode(model.prompts.autoencoding(ctx[:9]), task=0)]
        results.append(_loss_and_grads(model, model.collate(encoded)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert len(results[0][1]) > 2
    _assert_same_grads(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_a_trainable_lm_head_keeps_the_recomputed_chunks(tiny_tok):
    model = make_icae(tiny_tok, seed=5)
    model.lm_head.weight.requires_grad_(True)
    assert not model._fused_loss_applies()


def test_freeze_decoder_freezes_only_the_decoder_adapter(tiny_tok):
    plain = make_icae(tiny_tok)  # no decoder adapter: the decoder is the frozen base already
    assert plain.freeze_decoder() == 0
    assert all(p.requires_grad for n, p in plain.named_parameters() if "lora_" in n)
    model = make_icae(tiny_tok, train_decoder=True)
    frozen = model.freeze_decoder()
    decoder = [p for n, p in model.named_parameters() if "lora_" in n and ".decoder." in n]
    encoder = [p for n, p in model.named_parameters() if "lora_" in n and ".encoder." in n]
    assert frozen == sum(p.numel() for p in decoder) > 0
    assert not any(p.requires_grad for p in decoder) and all(p.requires_grad for p in encoder)
    assert model.extra_embeddings.requires_grad
