"""How evaluation runs the model at inference: decoding path, memory computed once, and
agent turns that extend one KV cache per trajectory.

- ``evaluation.decoding`` (auto | static | dynamic) sets the model's decoding path
  (:mod:`icae.models.decoding`; auto = static cache with CUDA-graph decode steps on CUDA).
- ``evaluation.memory_cache`` (ICAE): each distinct context (ids and start position) is
  compressed once for the whole evaluation and its memory reused by every prompt that
  holds it (SQuAD's questions about one paragraph; a trajectory's earlier observations,
  which every later turn repeats). ``compress_s`` then counts only the encoder calls made.
- ``evaluation.incremental_turns`` (trajectories): the turns of one trajectory run in order
  on one :class:`~icae.models.decoding.Conversation`, ICAE and the plain LLM alike: each
  observation is compressed when it first appears, the decoder's cache of the
  conversation so far is kept, and a turn prefills only the tokens that the cache does
  not already hold. Per-turn timings are then those of the new observation's compression
  (``compress_s``), the new tokens' prefill (``prefill_s``) and decoding (``decode_s``).
  Predictions equal those of the full-prompt path (tests/test_decoding.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)


@contextmanager
def inference_settings(model, e):
    """Apply ``evaluation.decoding`` and ``evaluation.memory_cache`` for the duration of an
    evaluation; yields a dict that receives the memory cache's statistics at the end."""
    from icae.models.decoding import resolve_mode
    from icae.models.memory_cache import MemoryCache

    resolve_mode(e.decoding, model.device)  # fails early on a bad value
    info: dict = {}
    prev_mode = model.decoding
    prev_cache = getattr(model, "memory_cache", None)
    model.decoding = e.decoding
    use_cache = bool(e.memory_cache) and getattr(model, "compresses_contexts", False)
    if use_cache:
        model.memory_cache = MemoryCache()
    try:
        yield info
    finally:
        if use_cache:
            info.update(model.memory_cache.stats())
            model.memory_cache = prev_cache
        model.decoding = prev_mode
        model._static_decoder = None  # release the decoder's buffers


def incremental_unsupported_reason(model, examples) -> str | None:
    from icae.models.decoding import static_unsupported_reason

    need = max(len(model.encode(ex.prompt).input_ids) + ex.max_new_tokens for ex in examples)
    return static_unsupported_reason(model, need)


def generate_turns_incrementally(model, examples, progress: bool = False) -> dict:
    """Trajectory turns, one :class:`Conversation` per trajectory, turns in order. Returns
    what :func:`icae.evaluation.run.generate_examples` returns, with per-turn timings."""
    from icae.evaluation.run import _progress
    from icae.models.decoding import Conversation

    by_traj: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_traj[ex.meta["trajectory_id"]].append(i)
    n = len(examples)
    ids: list[list[int] | None] = [None] * n
    per_ex: list[dict | None] = [None] * n
    prompt_tokens = [len(model.encode(ex.prompt).input_ids) for ex in examples]
    totals = {"compress_s": 0.0, "generate_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0,
              "decoded_tokens": 0, "kv_cache_peak_bytes": 0}
    use_graph = model.decoding_mode(None, 1, model.device) == "static"
    with _progress(n, "generate (incremental turns)", progress) as bar:
        for turns in by_traj.values():
            turns.sort(key=lambda i: examples[i].meta["turn"])
            capacity = max(prompt_tokens[i] + examples[i].max_new_tokens for i in turns)
            conv = Conversation(model, capacity=capacity, use_graph=use_graph)
            for i in turns:
                t: dict = {}
                out = conv.generate(examples[i].prompt, examples[i].max_new_tokens, timings=t)
                ids[i] = list(out)
                gen_s = t["prefill_s"] + t["decode_s"]
                per_ex[i] = {**t, "generate_s": gen_s, "latency_s": t["compress_s"] + gen_s,
                             "batch_size": 1}
                totals["compress_s"] += t["compress_s"]
                totals["prefill_s"] += t["prefill_s"]
                totals["decode_s"] += t["decode_s"]
                totals["generate_s"] += gen_s
                totals["decoded_tokens"] += len(out)
                totals["kv_cache_peak_bytes"] = max(totals["kv_cache_peak_bytes"],
                                                    t["kv_cache_bytes"])
                bar.update(1)
            del conv
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
    return {"ids": ids, "prompt_tokens": prompt_tokens, "timings": per_ex, **totals}
