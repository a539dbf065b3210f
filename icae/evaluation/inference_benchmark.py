"""``benchmark-inference``: latency and throughput of ICAE against the full-context LLM.

Speed does not depend on the weights' values, so by default the model is a randomly
initialised base of a published shape (``--shape``, built on the device, nothing
downloaded); without ``--shape`` the configured base model is loaded. One model serves
both sides: ICAE reads a context as memory slots (LoRA encoder on, decoder = the frozen
base), the LLM baseline reads the same context as text on the same base (its LoRA adapter
merged, i.e. the bare base). Decoding runs the full budget (``stop=False``): random
weights would stop at random places. Scenarios (``--scenarios``):

``qa``
    A question of ``--question-tokens`` tokens over a context of each ``--contexts``
    length, ``--new-tokens`` generated, at each ``--batches`` size. ICAE is timed cold
    (compression included) and with its memory computed once (served from the memory
    cache: the paper's many-questions-per-context setting); the LLM reads the context
    every time, and at batch 1 also with the context's KV cache kept across questions
    (prefix reuse, the strongest baseline). Compression, prefill and decode are timed
    apart (CUDA synchronisation around each phase; no host sync inside decoding).
    At batch 1 the decode step is compared with the time to read the decoder's weights
    and its KV cache once at the measured copy bandwidth of the card, and at
    ``--profile-context`` its kernels are profiled (:func:`profile_decode`).
``throughput``
    Questions over one ``--throughput-context``-token context, the largest batch that fits
    each model (up to ``--max-batch``; found from the measured memory per sequence, then
    backed off on out-of-memory): answers per second, ICAE with memory computed once and
    with compression counted.
``agent``
    Turns of real agent trajectories (``--agent-file``, e.g. the shared SWE trajectories,
    tokenised with ``--tokenizer``): for ICAE and the LLM alike one KV cache per
    trajectory is kept and extended (:class:`icae.models.decoding.Conversation`); per turn:
    compression of the new observation, prefill of the new tokens, ``--new-tokens``
    decoded, and the KV cache size. Turns whose text history exceeds
    ``--agent-min-history`` tokens are summarised.

Every case is measured after a warm-up run (CUDA-graph capture, allocator) as the median
of ``--repeats`` runs. Results: a JSON file (``--out``; rewritten after every case, so a
run stopped by ``--time-budget`` or a crash keeps what it measured) and a table on stdout.
Goals (issue "Inference that pays for the compression") are evaluated in ``goals``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger(__name__)

from icae.evaluation.inference_options import PRESETS, SHAPES, add_arguments  # noqa: F401


# ---------------------------------------------------------------------------------------
# Set-up


def _find_shared(*parts: str) -> Path | None:
    for root in (Path("shared"), Path("..") / "shared"):
        path = root.joinpath(*parts)
        if path.exists():
            return path
    return None


def _tokenizer(args):
    from icae.models.loading import load_tokenizer
    from icae.testing import tiny_tokenizer

    path = args.tokenizer or _find_shared("assets", "tokenizers", "qwen3")
    if args.shape == "tiny" and not args.tokenizer:
        path = None
    if path is None:
        return tiny_tokenizer(), "tiny test tokenizer"
    return load_tokenizer(str(path)), str(path)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_base(shape: str, dtype: torch.dtype, device: torch.device, max_pos: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    hidden, layers, heads, kv, inter, head_dim, vocab, tie, family = SHAPES[shape]
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                  max_position_embeddings=max(max_pos, 4096), tie_word_embeddings=tie)
    config = (Qwen3Config(head_dim=head_dim, **common) if family == "qwen3"
              else LlamaConfig(head_dim=head_dim, **common))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def build(cfg, args):
    """(ICAE model on the device, tokenizer description)."""
    from icae.models import build_model
    from icae.models.loading import torch_dtype

    device = _device()
    name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = torch_dtype(name)
    cfg.model.model_type = "icae"
    cfg.model.dtype = name
    cfg.model.lora_dropout = 0.0
    if args.shape:
        tok, tok_name = _tokenizer(args)
        base = _random_base(args.shape, dtype, device, 65536)
        model = build_model(cfg.model, base, tok)
    else:
        model = build_model(cfg.model)
        tok_name = cfg.model.base_model
    model.to(device=device)
    model.extra_embeddings.data = model.extra_embeddings.data.to(dtype)
    return model.eval(), tok_name


def _decoder_weight_bytes(model) -> int:
    """Bytes a decode step reads of the weights: every base parameter (LoRA adapters are
    off in the decoder) once, the input embedding only by the rows it looks up."""
    base = model.base
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    total = 0
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        total += p.numel() * p.element_size()
    if emb.data_ptr() != head.data_ptr():
        total -= emb.numel() * emb.element_size()
    return total


def measure_bandwidth(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), best of 5."""
    if device.type != "cuda":
        return None
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = math.inf
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    return 2 * n / best


# ---------------------------------------------------------------------------------------
# Measuring


def _free(model) -> None:
    model._static_decoder = None
    if model.device.type == "cuda":  # hand the last case's buffers back before the next
        gc.collect()
        torch.cuda.empty_cache()


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _median_timings(runs: list[dict]) -> dict:
    keys = set().union(*runs)
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def _qa_prompts(model, L: int, B: int, q_tokens: int, seed: int, compressed: bool,
                same_context: bool = False):
    from icae.models.templates import Context, Marker, Text

    g = torch.Generator().manual_seed(seed)
    hi = min(model.vocab_size, len(model.tokenizer))
    lo = min(10, hi - 1)
    ctx0 = torch.randint(lo, hi, (L,), generator=g).tolist()
    prefix = tuple(torch.randint(lo, hi, (6,), generator=g).tolist())  # chat header
    prompts = []
    for b in range(B):
        ctx = ctx0 if same_context or b == 0 else torch.randint(lo, hi, (L,), generator=g).tolist()
        q = tuple(torch.randint(lo, hi, (q_tokens,), generator=g).tolist())
        if compressed:
            prompts.append([Text(prefix), Context(tuple(ctx)), Marker("ft"), Text(q)])
        else:
            prompts.append([Text(prefix), Text(tuple(ctx)), Text(q)])
    return prompts


def _time(model, prompts, new_tokens: int, repeats: int, decoding: str | None = None) -> dict:
    dev = model.device
    model.generate(prompts, new_tokens, decoding=decoding, stop=False)  # warm-up, capture
    dec = getattr(model, "_static_decoder", None) if decoding != "dynamic" else None
    runs, out = [], None
    _peak_reset(dev)
    for _ in range(repeats):
        t: dict = {}
        out = model.generate(prompts, new_tokens, decoding=decoding, stop=False, timings=t)
        runs.append(t)
    res = _median_timings(runs)
    res["peak_gpu_mem_gib"] = _peak(dev)
    res["tokens"] = out
    if dec is not None:
        res["cuda_graph"] = dec.graph is not None
        if dec.graph_error:
            res["graph_error"] = dec.graph_error
    return res


def _kv_bytes(model) -> int:
    from icae.models.decoding import kv_bytes_per_token

    return kv_bytes_per_token(model.base.config, model.dtype)


def _side(model, prompts, new_tokens, repeats, compressed: bool, B: int,
          bandwidth: float | None, decoding: str | None = None) -> dict:
    """One timed side (ICAE or LLM) of a qa case."""
    r = _time(model, prompts, new_tokens, repeats, decoding or model.decoding)
    tokens = r.pop("tokens")
    if not compressed:  # no encoder: embedding the text belongs to the prefill
        r["prefill_s"] = r.get("prefill_s", 0.0) + r.pop("compress_s", 0.0)
        r["compress_s"] = 0.0
    prompt_len = len(model.encode(prompts[0]).input_ids)
    r["decoder_prompt_tokens"] = prompt_len
    r["answer_s"] = r["compress_s"] + r["prefill_s"] + r["decode_s"]
    steps = max(new_tokens - 1, 1)
    r["decode_step_s"] = r["decode_s"] / steps
    r["answers_per_s"] = B / r["answer_s"]
    kv = B * (prompt_len + new_tokens / 2) * _kv_bytes(model)
    r["decode_bytes_per_step"] = _decoder_weight_bytes(model) + kv
    if bandwidth:
        r["decode_bound_s"] = r["decode_bytes_per_step"] / bandwidth
        r["decode_step_over_bound"] = r["decode_step_s"] / r["decode_bound_s"]
    r["_tokens"] = tokens
    return r


def qa_case(model, L: int, B: int, args, bandwidth) -> dict:
    from icae.models.memory_cache import MemoryCache

    nt, rep, qt = args.new_tokens, args.repeats, args.question_tokens
    case = {"scenario": "qa", "context_tokens": L, "batch": B, "new_tokens": nt,
            "question_tokens": qt, "memory_slots": model.num_memory_slots(L)}
    _free(model)
    icae_prompts = _qa_prompts(model, L, B, qt, seed=L + B, compressed=True)
    case["icae"] = _side(model, icae_prompts, nt, rep, True, B, bandwidth)
    # Memory computed once: the same questions, memory served from the cache.
    model.memory_cache = MemoryCache()
    try:
        once = _side(model, icae_prompts, nt, rep, True, B, bandwidth)
    finally:
        model.memory_cache = None
    case["icae_memory_once"] = once
    _free(model)
    llm_prompts = _qa_prompts(model, L, B, qt, seed=L + B, compressed=False)
    case["llm"] = _side(model, llm_prompts, nt, rep, False, B, bandwidth)
    _free(model)
    if B == 1:
        case["llm_prefix_reuse"] = _prefix_reuse(model, llm_prompts[0], nt, rep, args)
        case["icae_dynamic_cache"] = _dynamic_reference(model, icae_prompts, nt, case["icae"])
        if L == args.profile_context:
            for side, prompts in (("icae", icae_prompts), ("llm", llm_prompts)):
                try:
                    case[f"{side}_decode_profile"] = profile_decode(model, prompts)
                except Exception as exc:  # the profile explains, it must not cost the case
                    case[f"{side}_decode_profile"] = {"error": f"{type(exc).__name__}: {exc}"}
                    _free(model)
    for side in ("icae", "icae_memory_once", "llm"):
        case[side].pop("_tokens", None)
    case["llm_over_icae_answer_s"] = case["llm"]["answer_s"] / case["icae"]["answer_s"]
    case["llm_over_icae_memory_once_answer_s"] = (case["llm"]["answer_s"]
                                                  / case["icae_memory_once"]["answer_s"])
    return case


def _prefix_reuse(model, prompt, nt, rep, args) -> dict:
    """The LLM with its context's KV kept: per answer, prefill of the question only."""
    from icae.models.decoding import Conversation
    from icae.models.templates import Text

    ctx_part, question = prompt[:-1], prompt[-1]
    g = torch.Generator().manual_seed(7)
    hi = min(model.vocab_size, len(model.tokenizer))
    conv = Conversation(model, capacity=len(model.encode(prompt).input_ids) + nt + 8)
    runs = []
    for i in range(rep + 2):
        q = Text(tuple(torch.randint(10, hi, (len(question.ids),), generator=g).tolist()))
        t: dict = {}
        conv.generate(list(ctx_part) + [q], nt, stop=False, timings=t)
        if i >= 2:  # the first call prefills the context; the second captures the graph
            runs.append(t)
    res = _median_timings(runs)
    res["prefill_s"] += res.pop("compress_s", 0.0)
    res["answer_s"] = res["prefill_s"] + res["decode_s"]
    del conv
    _free(model)
    return res


def _dynamic_reference(model, prompts, nt, static_side) -> dict:
    """Today's dynamic-cache decoding on the same prompts: its time and whether its greedy
    tokens equal the static path's (bf16 kernels may round differently)."""
    r = _time(model, prompts, nt, 1, decoding="dynamic")
    tokens = r.pop("tokens")
    same = [a == b for a, b in zip(tokens, static_side["_tokens"])]
    steps = max(nt - 1, 1)
    return {"decode_step_s": r["decode_s"] / steps, "prefill_s": r["prefill_s"],
            "static_speedup_decode": (r["decode_s"] / steps) / static_side["decode_step_s"],
            "greedy_tokens_equal_static": all(same),
            "first_difference": _first_difference(tokens, static_side["_tokens"])}


def profile_decode(model, prompts, steps: int = 8) -> dict:
    """What a decode step is made of: the static cache's step run eagerly under
    torch.profiler (the graph replays the same kernels), minus a run without steps.
    ``kernels_per_step`` / ``ops_per_step``: CUDA kernels / aten ops per step;
    ``device_s_per_step``: summed kernel time per step (a step far above it is launch
    bound); ``top_kernels``: the kernels with the most time, per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from icae.models.decoding import StaticDecoder, _bucket

    dev = model.device
    need = len(model.encode(prompts[0]).input_ids) + steps + 1
    _free(model)
    model._static_decoder = StaticDecoder(model, len(prompts), _bucket(need), model.dtype,
                                          use_graph=False)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    model.generate(prompts, steps + 1, decoding="static", stop=False)  # warm-up

    def totals(n_new):
        with profile(activities=acts) as prof:
            model.generate(prompts, n_new, decoding="static", stop=False)
            _sync(dev)
        kernels, ops, device_us, per_kernel = 0, 0, 0.0, {}
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = getattr(e, "self_cuda_time_total", 0.0)
            if getattr(e, "device_type", None) == DeviceType.CUDA:
                kernels += e.count
                device_us += t
                per_kernel[e.key] = (e.count, t)
            elif e.key.startswith("aten::"):
                ops += e.count
        return kernels, ops, device_us, per_kernel

    k1, o1, d1, per1 = totals(1)
    k2, o2, d2, per2 = totals(steps + 1)
    _free(model)
    # Per kernel, too, the difference of the two runs: the compression and the prefill,
    # which both runs contain, must not be counted as decoding.
    per = {}
    for name, (c2, t2) in per2.items():
        c1, t1 = per1.get(name, (0, 0.0))
        if c2 > c1:
            per[name] = ((c2 - c1) / steps, max(t2 - t1, 0.0) / steps)
    top = sorted(per.items(), key=lambda kv: -kv[1][1])[:12]
    return {"steps": steps, "kernels_per_step": (k2 - k1) / steps,
            "ops_per_step": (o2 - o1) / steps, "device_s_per_step": (d2 - d1) / steps / 1e6,
            "top_kernels": [{"name": k[:120], "count_per_step": c,
                             "device_s_per_step": t / 1e6}
                            for k, (c, t) in top]}


def _first_difference(a: list[list[int]], b: list[list[int]]) -> int | None:
    for ra, rb in zip(a, b):
        for i, (x, y) in enumerate(zip(ra, rb)):
            if x != y:
                return i
    return None


def _fits(fn):
    try:
        return fn(), None
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not _is_oom(exc):
            raise
        return None, "out of memory"


def _max_batch_run(model, make_prompts, nt, args, compressed, bandwidth, label) -> dict:
    """Largest batch (<= --max-batch) that fits: the memory slope from batches 1 and 2,
    then backing off by 20% on out-of-memory."""
    from icae.models.memory_cache import MemoryCache

    dev = model.device

    def run(B: int) -> dict:
        _free(model)
        if compressed:
            model.memory_cache = MemoryCache()
        try:
            return _side(model, make_prompts(B), nt, 1, compressed, B, bandwidth)
        finally:
            model.memory_cache = None
            _free(model)

    probes = {}
    for B in (1, 2):
        probes[B] = run(B)
    if dev.type != "cuda":
        B = min(args.max_batch, 4)
    else:
        slope = max(probes[2]["peak_gpu_mem_gib"] - probes[1]["peak_gpu_mem_gib"], 1e-3)
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        B = int((0.9 * total - probes[1]["peak_gpu_mem_gib"]) / slope) + 1
        B = max(2, min(args.max_batch, B))
    tries = []
    while B >= 1:
        res, err = _fits(lambda: run(B))
        tries.append({"batch": B, "error": err})
        if res is not None:
            res.pop("_tokens", None)
            res["batch"] = B
            res["tries"] = tries
            res["capped_by_max_batch"] = B == args.max_batch
            return res
        B = int(B * 0.8)
    return {"error": f"{label}: even batch 1 does not fit", "tries": tries}


def throughput_case(model, args, bandwidth) -> dict:
    L, nt, qt = args.throughput_context, args.new_tokens, args.question_tokens
    case = {"scenario": "throughput", "context_tokens": L, "new_tokens": nt,
            "question_tokens": qt, "memory_slots": model.num_memory_slots(L)}
    # ICAE: questions over one context whose memory is computed once (cache).
    case["icae_memory_once"] = _max_batch_run(
        model, lambda B: _qa_prompts(model, L, B, qt, 11, True, same_context=True), nt, args,
        True, bandwidth, "icae")
    # Compression throughput (contexts/s) at a moderate batch, to count it per answer.
    _free(model)
    B_c = 8 if model.device.type == "cuda" else 2
    ctxs = [list(p[1].ids) for p in _qa_prompts(model, L, B_c, qt, 12, True)]
    with torch.no_grad():
        model.compress_flat(ctxs)  # warm-up
        _sync(model.device)
        t0 = time.perf_counter()
        model.compress_flat(ctxs)
        _sync(model.device)
    compress_per_context = (time.perf_counter() - t0) / B_c
    case["compress_s_per_context"] = compress_per_context
    case["llm"] = _max_batch_run(
        model, lambda B: _qa_prompts(model, L, B, qt, 11, False, same_context=True), nt, args,
        False, bandwidth, "llm")
    icae, llm = case["icae_memory_once"], case["llm"]
    if "error" not in icae and "error" not in llm:
        case["icae_over_llm_answers_per_s_memory_once"] = (icae["answers_per_s"]
                                                           / llm["answers_per_s"])
        # Every question has its own context: one compression per answer as well.
        with_comp = 1.0 / (1.0 / icae["answers_per_s"] + compress_per_context)
        case["icae_answers_per_s_with_compression"] = with_comp
        case["icae_over_llm_answers_per_s_with_compression"] = with_comp / llm["answers_per_s"]
    return case


# ---------------------------------------------------------------------------------------
# Agent turns


def load_agent_records(path, tokenizer, n: int | None, min_tokens: int) -> list[dict]:
    """Prepared trajectories (compress flags as ``prepare-data`` sets them), those with at
    least ``min_tokens`` tokens first, closest to the median length of those."""
    from icae.config import TrajectoryDataConfig
    from icae.data.trajectories import load_trajectories, prepare_trajectory

    tcfg = TrajectoryDataConfig()
    raw = load_trajectories(path)
    recs = []
    for r in raw:
        if all("compress" in m for m in r.get("messages", [])) and "num_tokens" in r:
            recs.append(r)
            continue
        prepared = prepare_trajectory(r, tokenizer, tcfg)
        if prepared:
            recs.append(prepared)
    long = [r for r in recs if r["num_tokens"] > min_tokens] or recs
    med = statistics.median(r["num_tokens"] for r in long)
    long.sort(key=lambda r: (abs(r["num_tokens"] - med), r["id"]))
    return long[:n] if n else long


def _turn_prompts(model, record, max_turns):
    from icae.models.templates import Context, Text, compressed_conversation

    msgs = record["messages"]
    assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"][1:]
    if max_turns:
        assistant = assistant[:max_turns]
    out = []
    for idx in assistant:
        m, contexts = compressed_conversation(msgs[:idx], model.prompts.encode)
        pieces = model.prompts.chat(m, contexts)
        text = [Text(p.ids) if isinstance(p, Context) else p for p in pieces]
        out.append((pieces, text))
    return out


def agent_case(model, record, args) -> dict:
    from icae.models.decoding import Conversation

    nt = args.new_tokens
    turns = _turn_prompts(model, record, args.agent_max_turns)
    case = {"scenario": "agent", "trajectory": record["id"], "num_tokens": record["num_tokens"],
            "turns": len(turns), "new_tokens": nt}
    for side, k in (("icae", 0), ("llm", 1)):
        _free(model)
        _peak_reset(model.device)
        last = len(model.encode(turns[-1][k]).input_ids)
        conv = Conversation(model, capacity=last + nt + 64)
        conv.decoder.warm_up()
        rows = []
        for i, t in enumerate(turns):
            timing: dict = {}
            conv.generate(t[k], nt, stop=False, timings=timing)
            if side == "llm":  # no encoder: embedding the new text is part of its prefill
                timing["prefill_s"] += timing["compress_s"]
                timing["compress_s"] = 0.0
            timing["turn"] = i + 1
            timing["history_text_tokens"] = len(model.encode(t[1]).input_ids)
            timing["turn_s"] = timing["compress_s"] + timing["prefill_s"] + timing["decode_s"]
            rows.append(timing)
        case[side] = {"turns": rows, "peak_gpu_mem_gib": _peak(model.device),
                      "kv_cache_peak_bytes": max(r["kv_cache_bytes"] for r in rows),
                      "kv_cache_allocated_bytes": conv.decoder.capacity * _kv_bytes(model),
                      "cuda_graph": conv.decoder.graph is not None,
                      **({"graph_error": conv.decoder.graph_error}
                         if conv.decoder.graph_error else {})}
        del conv
    _free(model)
    long = [(a, b) for a, b in zip(case["icae"]["turns"], case["llm"]["turns"])
            if a["history_text_tokens"] > args.agent_min_history]
    case["turns_beyond_min_history"] = len(long)
    if long:
        case["median_llm_over_icae_turn_s"] = statistics.median(b["turn_s"] / a["turn_s"]
                                                                for a, b in long)
        case["median_icae_turn_s"] = statistics.median(a["turn_s"] for a, _ in long)
        case["median_llm_turn_s"] = statistics.median(b["turn_s"] for _, b in long)
    return case


# ---------------------------------------------------------------------------------------
# Goals, table, entry point


def goals(cases: list[dict]) -> dict:
    out = {}
    qa = {(c["context_tokens"], c["batch"]): c for c in cases
          if c.get("scenario") == "qa" and "error" not in c}
    c4 = qa.get((4096, 1))
    if c4 and "decode_step_over_bound" in c4["icae"]:
        worst = max(c4["icae"]["decode_step_over_bound"], c4["llm"]["decode_step_over_bound"])
        out["decode_step_batch1_within_1.5x_of_bound"] = {
            "icae": c4["icae"]["decode_step_over_bound"],
            "llm": c4["llm"]["decode_step_over_bound"], "target": 1.5, "met": worst <= 1.5}
    if c4:
        r = c4["llm_over_icae_memory_once_answer_s"]
        out["qa_4k_per_answer_memory_once"] = {
            "llm_over_icae": r, "target": 2.0, "met": r >= 2.0,
            "against_llm_prefix_reuse": (c4["llm_prefix_reuse"]["answer_s"]
                                         / c4["icae_memory_once"]["answer_s"])}
    tp = next((c for c in cases if c.get("scenario") == "throughput"
               and "icae_over_llm_answers_per_s_memory_once" in c), None)
    if tp:
        r = tp["icae_over_llm_answers_per_s_memory_once"]
        out["qa_4k_batched_answers_per_s"] = {
            "icae_over_llm_memory_once": r,
            "icae_over_llm_with_compression": tp["icae_over_llm_answers_per_s_with_compression"],
            "batches": {"icae": tp["icae_memory_once"]["batch"], "llm": tp["llm"]["batch"]},
            "target": 2.5, "met": r >= 2.5}
    ag = [c for c in cases if c.get("scenario") == "agent" and "median_llm_over_icae_turn_s" in c]
    if ag:
        r = statistics.median(c["median_llm_over_icae_turn_s"] for c in ag)
        out["agent_turns_beyond_16k"] = {
            "median_llm_over_icae_turn_s": r, "target": 2.0, "met": r >= 2.0,
            "kv_cache_peak_bytes": {"icae": max(c["icae"]["kv_cache_peak_bytes"] for c in ag),
                                    "llm": max(c["llm"]["kv_cache_peak_bytes"] for c in ag)}}
    return out


def _ms(x) -> str:
    return "" if x is None else f"{1000 * x:.1f}"


def _num(x, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table(result: dict) -> str:
    lines = ["| case | side | compress ms | prefill ms | decode ms/step | answer ms | "
             "answers/s | step/bound | peak GiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        if "error" in c or c.get("skipped"):
            lines.append(f"| {c.get('name')} | {c.get('error') or 'skipped'} |||||||")
            continue
        if c["scenario"] in ("qa", "throughput"):
            for side in ("icae", "icae_memory_once", "llm", "llm_prefix_reuse"):
                r = c.get(side)
                if not r or "error" in r:
                    continue
                name = c["name"] + (f" b{r['batch']}" if "batch" in r and c["scenario"] ==
                                    "throughput" else "")
                ratio = r.get("decode_step_over_bound")
                step = r.get("decode_step_s", r["decode_s"] / max(c["new_tokens"] - 1, 1))
                per_s = r.get("answers_per_s", 1 / r["answer_s"])
                lines.append(
                    f"| {name} | {side} | {_ms(r.get('compress_s'))} | {_ms(r.get('prefill_s'))}"
                    f" | {_ms(step)} | {_ms(r['answer_s'])} | {per_s:.2f} | {_num(ratio)}"
                    f" | {_num(r.get('peak_gpu_mem_gib'), 1)} |")
        elif c["scenario"] == "agent":
            for side in ("icae", "llm"):
                rows = c[side]["turns"]
                med = lambda k: statistics.median(r[k] for r in rows)
                lines.append(
                    f"| {c['name']} ({len(rows)} turns) | {side} | {_ms(med('compress_s'))} | "
                    f"{_ms(med('prefill_s'))} | {_ms(med('decode_s') / max(c['new_tokens'] - 1, 1))}"
                    f" | {_ms(med('turn_s'))} (median turn) | | | "
                    f"KV {c[side]['kv_cache_peak_bytes'] / 2**30:.2f} GiB |")
    lines.append("")
    for name, g in result.get("goals", {}).items():
        lines.append(f"goal {name}: {json.dumps(g)}")
    return "\n".join(lines)


def _write(path, result) -> None:
    if path:
        from icae.utils import atomic_write_json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)


def _apply_preset(args) -> None:
    preset = PRESETS.get(args.preset or "", {})
    defaults = {"scenarios": "qa", "contexts": "1024,4096,16384", "batches": "1,8",
                "new_tokens": 32, "repeats": 3, "agent_trajectories": 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, value))


def run(cfg, args) -> dict:
    import transformers

    from icae.utils import seed_everything

    _apply_preset(args)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    cfg.model.max_encoder_tokens = max(cfg.model.max_encoder_tokens, 32768)
    model, tok_name = build(cfg, args)
    model.decode_compile = bool(args.compile_step)
    model.decoding = args.decoding
    dev = model.device
    bandwidth = measure_bandwidth(dev)
    result = {"meta": {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "shape": args.shape or cfg.model.base_model, "dtype": str(model.dtype),
        "tokenizer": tok_name, "mem_size": cfg.model.mem_size,
        "mean_compression_rate": cfg.model.mean_compression_rate,
        "position_layout": cfg.model.position_layout, "lora_r": cfg.model.lora_r,
        "decoder_weight_bytes": _decoder_weight_bytes(model),
        "kv_bytes_per_token": _kv_bytes(model),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "args": {k: v for k, v in vars(args).items() if k not in ("overrides",)}},
        "cases": []}
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"qa", "throughput", "agent"}
    if unknown:
        raise ValueError(f"--scenarios: unknown {sorted(unknown)}")
    # The cases the goals read come first (qa at 4k and batch 1, throughput, agent), the
    # rest of the qa grid last, so that a time budget cuts the least informative ones.
    plan, rest = [], []
    if "qa" in scenarios:
        for L in [int(x) for x in str(args.contexts).split(",")]:
            for B in [int(x) for x in str(args.batches).split(",")]:
                item = (f"qa L{L} b{B}", lambda L=L, B=B: qa_case(model, L, B, args, bandwidth))
                (plan if (L, B) == (4096, 1) else rest).append(item)
    if "throughput" in scenarios:
        plan.append((f"throughput L{args.throughput_context}",
                     lambda: throughput_case(model, args, bandwidth)))
    if "agent" in scenarios:
        path = args.agent_file or _find_shared("data", "trajectories", "test.jsonl.gz")
        if path is None:
            result["cases"].append({"name": "agent", "skipped": True,
                                    "error": "no --agent-file and no shared trajectories"})
        else:
            for rec in load_agent_records(path, model.tokenizer, args.agent_trajectories,
                                          args.agent_min_history):
                plan.append((f"agent {rec['id'].rsplit('/', 1)[-1]}",
                             lambda rec=rec: agent_case(model, rec, args)))
    plan += rest
    for name, fn in plan:
        if args.time_budget and time.perf_counter() - t_start > args.time_budget:
            result["cases"].append({"name": name, "skipped": True,
                                    "error": "time budget spent"})
            continue
        t0 = time.perf_counter()
        try:
            case = fn()
        except Exception as exc:  # keep the other cases; the error is in the results
            if not _is_oom(exc):
                log.exception("case %s failed", name)
            case = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            _free(model)
        case["name"] = name
        case["seconds"] = time.perf_counter() - t0
        result["cases"].append(case)
        result["goals"] = goals(result["cases"])
        result["meta"]["wall_s"] = time.perf_counter() - t_start
        _write(args.out, result)
        log.info("%s done in %.1f s", name, case["seconds"])
    result["goals"] = goals(result["cases"])
    result["meta"]["wall_s"] = time.perf_counter() - t_start
    _write(args.out, result)
    print(table(result))
    return result
