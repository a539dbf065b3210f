"""Static-cache decoding, memory computed once, and incremental conversations against the
dynamic-cache reference path, on tiny random models (CPU; the CUDA-graph test needs a GPU)."""

import pytest
import torch

from icae.models.templates import compressed_conversation
from tests.conftest import make_icae


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _prompts(model, tok):
    pb = model.prompts
    ctx = _ids(tok, "The quick brown fox jumps over the lazy dog. Alice was beginning")
    first = (pb.autoencoding_prompt(ctx) if model.compresses_contexts
             else pb.chat([{"role": "user", "content": "the fox"}]))
    return [first, pb.chat([{"role": "user", "content": "hi"}]),
            pb.chat([{"role": "user", "content": "A memory slot holds a summary of"}])]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
@pytest.mark.parametrize("model_type", ["icae", "llm"])
def test_static_cache_decoding_equals_dynamic(tiny_tok, arch, model_type):
    model = make_icae(tiny_tok, arch=arch, model_type=model_type).eval()
    prompts = _prompts(model, tiny_tok)  # three lengths: a left-padded batch
    for stop in (True, False):
        dynamic = model.generate(prompts, 24, decoding="dynamic", stop=stop)
        timings: dict = {}
        static = model.generate(prompts, 24, decoding="static", stop=stop, timings=timings)
        assert static == dynamic
        assert timings["prefill_s"] > 0 and timings["decode_s"] > 0
    assert any(len(r) == 24 for r in model.generate(prompts, 24, decoding="static", stop=False))
    # The decoder is kept and reused: a second batch of the same size, shorter prompts.
    dec = model._static_decoder
    shorter = [p[:max(1, len(p) - 1)] for p in prompts]
    assert (model.generate(shorter, 20, decoding="static")
            == model.generate(shorter, 20, decoding="dynamic"))
    assert model._static_decoder is dec
    # One row at a time: the same tokens as in the batch.
    singles = [model.generate([p], 24, decoding="static")[0] for p in prompts]
    assert singles == model.generate(prompts, 24, decoding="dynamic")


def test_static_cache_checks_stops_only_every_k_tokens(tiny_tok, monkeypatch):
    from icae.models import decoding as D

    model = make_icae(tiny_tok, model_type="llm").eval()
    prompts = _prompts(model, tiny_tok)
    syncs = []
    real = D.StaticDecoder._run_steps
    monkeypatch.setattr(D.StaticDecoder, "_run_steps",
                        lambda self, n: (syncs.append(n), real(self, n))[1])
    model._static_decoder = None
    model.generate(prompts, 80, decoding="static", stop=False)
    assert syncs == [4, 8, 16, 32, 19]  # 79 decode steps after the prefill's token


def test_failed_graph_capture_falls_back_to_eager_steps(tiny_tok, monkeypatch):
    from icae.models import decoding as D

    model = make_icae(tiny_tok, model_type="llm").eval()
    prompts = _prompts(model, tiny_tok)
    reference = model.generate(prompts, 12, decoding="dynamic", stop=False)

    def broken(self, saved):
        self._step()  # mutates the state, as a capture that dies half-way would
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(D.StaticDecoder, "_capture_graph", broken)
    dec = D.StaticDecoder(model, len(prompts), 256, model.dtype)
    dec.use_graph = True
    model._static_decoder = dec
    assert model.generate(prompts, 12, decoding="static", stop=False) == reference
    assert model._static_decoder is dec and dec.graph is None and not dec.use_graph
    assert "stream is capturing" in dec.graph_error


def test_decoding_mode_falls_back_or_fails_clearly(tiny_tok):
    model = make_icae(tiny_tok).eval()
    assert model.decoding_mode("auto", 100, torch.device("cpu")) == "dynamic"
    assert model.decoding_mode("static", 100, torch.device("cpu")) == "static"
    model.base.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="sdpa"):
        model.decoding_mode("static", 100, torch.device("cpu"))
    assert model.decoding_mode("auto", 100, torch.device("cuda")) == "dynamic"
    with pytest.raises(ValueError, match="decoding"):
        model.decoding_mode("fast", 100, torch.device("cpu"))


def test_memory_computed_once_per_context(tiny_tok):
    from icae.models.memory_cache import MemoryCache

    model = make_icae(tiny_tok, mem_size=4, rate=2).eval()
    pb = model.prompts
    paragraphs = [_ids(tiny_tok, t) for t in (
        "The quick brown fox jumps over the lazy dog. Alice was beginning to get tired",
        "Compression turns long contexts into a few vectors. def function(x): return x")]
    questions = ["what?", "who was tired?", "which fox?", "how many vectors?", "x + 1?"]
    prompts = [pb.chat([{"role": "user", "content": "\ue000ICAE_CONTEXT_0\ue001" + q}], [p])
               for p in paragraphs for q in questions]
    reference = [model.generate(prompts[i:i + 3], 12) for i in range(0, len(prompts), 3)]
    seen = []
    # Every encoder pass starts from encoder_inputs (compress_flat and the cache alike).
    real = model.encoder_inputs
    model.encoder_inputs = lambda contexts, starts=None: (seen.extend(map(tuple, contexts)),
                                                          real(contexts, starts))[1]
    model.memory_cache = MemoryCache()
    cached = [model.generate(prompts[i:i + 3], 12) for i in range(0, len(prompts), 3)]
    assert cached == reference
    assert sorted(seen) == sorted(map(tuple, paragraphs))  # each paragraph encoded once
    assert model.memory_cache.stats()["hits"] == len(prompts) - len(paragraphs)
    # Training never reads stale memory: with gradients on, the cache is bypassed.
    with torch.enable_grad():
        model.compress_once([paragraphs[0]], [1])
    assert seen.count(tuple(paragraphs[0])) == 2


def test_memory_cache_evicts_least_recently_used(tiny_tok):
    from icae.models.memory_cache import MemoryCache

    model = make_icae(tiny_tok, mem_size=4, rate=2).eval()
    # The memory of a 3-token context: its slots (ICAE's rule) of float32 vectors.
    one = model.num_memory_slots(3) * model.extra_embeddings.shape[1] * 4
    cache = MemoryCache(max_bytes=2 * one)
    with torch.no_grad():
        for ctx in ([5, 6, 7], [8, 9, 10], [5, 6, 7], [11, 12, 13]):
            cache.compress(model, [ctx], [1])
    assert len(cache) == 2 and cache.bytes == 2 * one
    assert cache.key([8, 9, 10], 1) not in cache._entries  # the least recently used went


def _trajectory(tok):
    text = ["You are an agent.", "Fix the bug in the fox module.",
            "THOUGHT: look at the file\n```bash\ncat fox.py\n```",
            "def function(x): return x + 1 # code and prose alike. The quick brown fox.",
            "THOUGHT: edit it\n```bash\nsed -i s/1/2/ fox.py\n```",
            "It is a truth universally acknowledged, that a single man in possession",
            "THOUGHT: run the tests\n```bash\npytest\n```",
            "0123456789 ()[]{}<>=+-*/.,;:!?'\" Alice was beginning to get very tired",
            "THOUGHT: done\n```bash\nsubmit\n```"]
    roles = ["system", "user"] + ["assistant", "user"] * 3 + ["assistant"]
    return [{"role": r, "content": c, "compress": r == "user" and i > 1}
            for i, (r, c) in enumerate(zip(roles, text))]


@pytest.mark.parametrize("model_type", ["icae", "llm"])
def test_incremental_turns_equal_full_prompts(tiny_tok, model_type):
    from icae.models.decoding import Conversation

    model = make_icae(tiny_tok, model_type=model_type, mem_size=4, rate=2).eval()
    messages = _trajectory(tiny_tok)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    prompts = []
    for idx in turns:
        msgs, contexts = compressed_conversation(messages[:idx], model.prompts.encode)
        prompts.append(model.prompts.chat(msgs, contexts))
    reference = [model.generate([p], 16, decoding="dynamic")[0] for p in prompts]
    encoded = []
    if model_type == "icae":
        real = model.compress_flat
        model.compress_flat = lambda c, s=None: (encoded.extend(map(tuple, c)), real(c, s))[1]
    conv = Conversation(model, capacity=64)  # too small: it grows on the way
    out, timings = [], []
    for p in prompts:
        t: dict = {}
        out.append(conv.generate(p, 16, timings=t))
        timings.append(t)
    assert out == reference
    lengths = [len(model.encode(p).input_ids) for p in prompts]
    assert timings[0]["reused_tokens"] == 0 and timings[0]["prefill_tokens"] == lengths[0]
    for k in range(1, len(prompts)):
        # Everything but the end of the previous prompt (the generation header, which
        # Qwen-style templates render differently for past turns) comes from the cache.
        assert timings[k]["reused_tokens"] >= lengths[k - 1] - 8
        assert timings[k]["prefill_tokens"] == lengths[k] - timings[k]["reused_tokens"]
    if model_type == "icae":
        observations = [tuple(model.prompts.encode(m["content"])) for m in messages
                        if m.get("compress")]
        assert sorted(encoded) == sorted(observations)  # each observation encoded once
    # Decoding all budget tokens keeps the cache consistent as well.
    conv2 = Conversation(model, capacity=512)
    assert conv2.generate(prompts[0], 8, stop=False) == model.generate(
        [prompts[0]], 8, decoding="dynamic", stop=False)[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("model_type", ["icae", "llm"])
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_graph_decoding_equals_dynamic(tiny_tok, model_type, compiled):
    # float32 on the GPU: the graph replays the eager step's kernels (compiled: inductor's).
    model = make_icae(tiny_tok, model_type=model_type).cuda().eval()
    model.decode_compile = compiled
    prompts = _prompts(model, tiny_tok)
    for stop in (False, True):
        dynamic = model.generate(prompts, 32, decoding="dynamic", stop=stop)
        static = model.generate(prompts, 32, decoding="static", stop=stop)
        dec = model._static_decoder
        assert dec.graph is not None and dec.graph_error is None and dec.compiled == compiled
        assert static == dynamic
    # Incremental turns replay the same captured step across calls.
    from icae.models.decoding import Conversation

    conv = Conversation(model, capacity=256)
    for p in prompts:
        assert conv.generate(p, 16) == model.generate([p], 16, decoding="dynamic")[0]
    assert conv.decoder.graph is not None
