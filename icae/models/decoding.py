"""Fast greedy decoding: a pre-allocated KV cache and decode steps replayed from a CUDA graph.

Why: with a growing (dynamic) KV cache every decode step is a Python loop over the layers
that launches hundreds of small kernels and reallocates the cache; at batch 1 that, not
the GPU, sets the pace (about 55 ms per token for a 1.7B model). Here

- :class:`DecodeCache` holds keys and values in buffers of a fixed ``capacity``. Prefill
  (any number of new tokens, eager) writes at the cache's current length and attends only
  over the filled part, so it runs the same SDPA kernels as the dynamic path. Decode steps
  write at a device-side counter and attend over the whole buffer under a 4D boolean mask
  that the step itself extends by one position, so a step has static shapes and no host
  value in it.
- :class:`StaticDecoder` owns the cache and the step's input/output buffers and, on CUDA,
  captures one decode step (embedding, transformer, LM head, argmax, stop flags) in a
  CUDA graph. The host looks at the stop flags only after 4, 12, 28, ... steps and then
  every ``check_every`` (32) steps.
- :class:`Conversation` keeps one sequence's cache across calls and extends it: each new
  prompt reuses the longest prefix (same token ids, same position ids, same compressed
  contexts) already in the cache, so an agent turn only encodes and prefills what is new.

Greedy outputs equal those of :meth:`LoRAWrappedModel.greedy_decode` with a dynamic cache
(same prefill kernels; decode steps differ only in attending over masked, unused cache
slots, which adds exact zeros). Decoding runs unchanged on CPU without the graph.

Limits (checked by :func:`static_unsupported_reason`; the dynamic path remains for them):
SDPA attention only (the 4D mask is boolean), and every layer must be full attention, or a
sliding window no shorter than the cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

DECODING_MODES = ("auto", "static", "dynamic")


# ---------------------------------------------------------------------------------------
# The cache


def _layer_class():
    from transformers.cache_utils import StaticLayer

    class _Layer(StaticLayer):
        """A static layer whose prefill sees only the filled part of the buffers."""

        def __init__(self, max_cache_len: int):
            super().__init__(max_cache_len=max_cache_len)
            self.length = 0          # host copy of cumulative_length (eager calls only)
            self.graph_mode = False  # set while a decode step is captured or run

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            q = key_states.shape[-2]
            if self.graph_mode:
                # Device-side position: no host value may enter a captured step.
                idx = torch.arange(q, device=self.device) + self.cumulative_length
                self.keys.index_copy_(2, idx, key_states)
                self.values.index_copy_(2, idx, value_states)
                self.cumulative_length.add_(q)
                return self.keys, self.values
            n = self.length
            if n + q > self.max_cache_len:
                raise RuntimeError(f"DecodeCache overflow: {n} + {q} tokens > capacity "
                                   f"{self.max_cache_len}")
            self.keys[:, :, n:n + q] = key_states
            self.values[:, :, n:n + q] = value_states
            self.length = n + q
            self.cumulative_length.fill_(n + q)
            if n == 0:  # what the dynamic cache returns too: same kernels, same numbers
                return key_states, value_states
            return self.keys[:, :, :n + q], self.values[:, :, :n + q]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

    return _Layer


class DecodeCache:
    """Factory for a :class:`transformers.Cache` of full-attention static layers with a
    host-tracked length (see the module docstring)."""

    def __new__(cls, config, batch_size: int, capacity: int, dtype: torch.dtype,
                device: torch.device):
        from transformers.cache_utils import Cache

        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") \
            else config
        layer_cls = _layer_class()
        layers = [layer_cls(capacity) for _ in range(text.num_hidden_layers)]
        cache = Cache(layers=layers)
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        cache.early_initialization(batch_size, heads, head_dim, dtype, device)
        cache.capacity = capacity
        return cache


def cache_length(cache) -> int:
    return cache.layers[0].length


def set_cache_length(cache, n: int) -> None:
    """Forget everything after the first ``n`` positions (the buffers are overwritten
    before they are read again)."""
    for layer in cache.layers:
        layer.length = n
        layer.cumulative_length.fill_(n)


def _set_graph_mode(cache, on: bool) -> None:
    for layer in cache.layers:
        layer.graph_mode = on


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def static_unsupported_reason(model, capacity: int) -> str | None:
    """Why the static path cannot run this model (None when it can)."""
    config = model.base.config
    impl = getattr(config, "_attn_implementation", None)
    if impl != "sdpa":
        return f"attention implementation {impl!r} (the static path needs 'sdpa')"
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or []
    window = getattr(text, "sliding_window", None)
    rope = getattr(getattr(model.inner, "rotary_emb", None), "rope_type", "default")
    if isinstance(rope, str) and ("dynamic" in rope or rope == "longrope"):
        return f"RoPE type {rope!r} recomputes its frequencies from host values"
    if any(t != "full_attention" for t in types) or (not types and window is not None):
        if window is None or window < capacity:
            return (f"sliding-window attention (window {window}) shorter than the "
                    f"{capacity}-token cache")
    return None


def resolve_mode(mode: str | None, device: torch.device) -> str:
    """``auto``: the static path on CUDA, the dynamic one elsewhere."""
    mode = mode or "auto"
    if mode not in DECODING_MODES:
        raise ValueError(f"decoding: must be one of {', '.join(DECODING_MODES)}, got {mode!r}")
    if mode == "auto":
        return "static" if device.type == "cuda" else "dynamic"
    return mode


# ---------------------------------------------------------------------------------------
# Decoding


def _cut_rows(tokens: list[list[int]], stops: set[int]) -> list[list[int]]:
    out = []
    for row in tokens:
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:cut])
    return out


class StaticDecoder:
    """Greedy decoding for ``batch_size`` rows on a :class:`DecodeCache` of ``capacity``
    positions. ``use_graph`` (default: on CUDA) replays the decode step from a CUDA graph,
    captured on the first decode and reused until the cache is reallocated."""

    def __init__(self, model, batch_size: int, capacity: int, dtype: torch.dtype,
                 use_graph: bool | None = None, check_every: int = 32,
                 compile_step: bool | None = None):
        self.model = model
        self.device = model.device
        self.dtype = dtype
        self.batch_size = batch_size
        self.capacity = capacity
        # CUDA graphs exist on CUDA only; elsewhere the same step runs eagerly.
        self.use_graph = self.device.type == "cuda" and use_graph is not False
        self.check_every = max(1, int(check_every))
        self.cache = DecodeCache(model.base.config, batch_size, capacity, dtype, self.device)
        B, dev = batch_size, self.device
        self.tok = torch.zeros(B, dtype=torch.long, device=dev)
        self.pos = torch.zeros(B, 1, dtype=torch.long, device=dev)
        self.step_idx = torch.zeros(1, dtype=torch.long, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.mask = torch.zeros(B, 1, 1, capacity, dtype=torch.bool, device=dev)
        self.tokens = torch.zeros(B, capacity + 1, dtype=torch.long, device=dev)
        self.pad = torch.tensor(model.pad_id, dtype=torch.long, device=dev)
        self.stop = torch.tensor(list(model.stop_ids) or [-1], dtype=torch.long, device=dev)
        self.stop_set = set(model.stop_ids)
        # A device flag, not a Python branch: the captured step serves both settings.
        self.stopping = torch.ones((), dtype=torch.bool, device=dev)
        self.graph = None
        self.graph_error: str | None = None
        self._cache_kw = model._cache_kwarg()
        # Optional: torch.compile the step (fuses the many small norm / rotary / elementwise
        # kernels that a CUDA graph still runs one by one); the compiled step is captured
        # in the graph all the same. Compiling takes minutes and is redone for each batch
        # size and capacity, so it is off unless asked for (model.decode_compile).
        if compile_step is None:
            compile_step = bool(getattr(model, "decode_compile", False))
        self.compiled = compile_step
        self._step_impl = (torch.compile(self._step, dynamic=False) if compile_step
                           else self._step)

    # -- the compiled step -------------------------------------------------------------
    def _is_stop(self, token: torch.Tensor) -> torch.Tensor:
        return (token[:, None] == self.stop[None, :]).any(-1) & self.stopping

    def _step(self) -> None:
        m = self.model
        cur = self.cache.layers[0].cumulative_length.view(1)
        self.mask.index_fill_(-1, cur, True)  # the new token sees itself
        emb = m.embed_tokens(self.tok[:, None]).to(self.dtype)
        hidden = m.inner(inputs_embeds=emb, attention_mask=self.mask, position_ids=self.pos,
                         use_cache=True, **{self._cache_kw: self.cache}).last_hidden_state
        nxt = m.lm_head(hidden[:, -1]).float().argmax(-1)
        nxt = torch.where(self.done, self.pad, nxt)
        self.tokens.index_copy_(1, self.step_idx, nxt[:, None])
        self.done.logical_or_(self._is_stop(nxt))
        self.tok.copy_(nxt)
        self.pos.add_(1)
        self.step_idx.add_(1)

    def _state(self) -> list[torch.Tensor]:
        return ([self.tok, self.pos, self.step_idx, self.done, self.mask, self.tokens]
                + [layer.cumulative_length for layer in self.cache.layers])

    def _capture(self) -> None:
        """Capture the step; should capturing fail (an op that syncs with the host, in a
        model or library version we did not test), run the same step eagerly instead and
        record why in ``graph_error``."""
        saved = [t.clone() for t in self._state()]
        try:
            self._capture_graph(saved)
        except Exception as exc:  # noqa: BLE001 - any failure: eager steps still decode
            if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc):
                raise  # not a capture problem: the caller decides (smaller batch)
            log.warning("CUDA-graph capture of the decode step failed; decoding eagerly "
                        "on the static cache: %s", exc)
            self.graph_error = f"{type(exc).__name__}: {exc}"[:500]
            self.graph = None
            self.use_graph = False
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            for t, s in zip(self._state(), saved):
                t.copy_(s)

    def _capture_graph(self, saved) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (allocator, cuBLAS, compiling)
                self._step_impl()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_impl()
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        self.graph = graph

    def warm_up(self) -> None:
        """Capture the decode step now rather than in the first timed decode."""
        if self.use_graph and self.graph is None:
            _set_graph_mode(self.cache, True)
            try:
                with self.model.adapter(self.model.decoder_adapter):
                    self._capture()
            finally:
                _set_graph_mode(self.cache, False)

    def _run_steps(self, n: int) -> None:
        _set_graph_mode(self.cache, True)
        try:
            if self.use_graph and self.graph is None:
                self._capture()
            if self.graph is not None:
                for _ in range(n):
                    self.graph.replay()
            else:
                for _ in range(n):
                    self._step_impl()
        finally:
            _set_graph_mode(self.cache, False)

    # -- prefill and decode ------------------------------------------------------------
    def reset(self) -> None:
        set_cache_length(self.cache, 0)

    def prefill(self, embeds: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``embeds`` (B, q, H) to the cache; returns the last hidden state (B, H).
        ``attention_mask`` (B, cache length + q) marks padding; None: no padding."""
        out = self.model.inner(inputs_embeds=embeds.to(self.dtype), attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=True,
                               **{self._cache_kw: self.cache})
        return out.last_hidden_state[:, -1]

    def decode(self, last_hidden: torch.Tensor, next_pos: torch.Tensor,
               max_new_tokens: int, valid: torch.Tensor | None = None,
               stop: bool = True) -> list[list[int]]:
        """Greedy tokens after a prefill whose last hidden state is ``last_hidden``.
        ``next_pos`` (B,): position id of the first generated token; ``valid`` (B, n): which
        of the ``n`` cached positions each row may attend to (None: all). Rows stop at
        their first stop token (not returned); ``stop=False`` always runs the full budget
        (benchmarks of random weights). Returns at most ``max_new_tokens`` ids per row."""
        if max_new_tokens < 1:
            return [[] for _ in range(self.batch_size)]
        n = cache_length(self.cache)
        if n + max_new_tokens - 1 > self.capacity:
            raise RuntimeError(f"StaticDecoder: {n} cached + {max_new_tokens} new tokens do "
                               f"not fit the {self.capacity}-position cache")
        first = self.model.lm_head(last_hidden).float().argmax(-1)
        self.mask.zero_()
        if valid is None:
            self.mask[:, 0, 0, :n] = True
        else:
            self.mask[:, 0, 0, :n] = valid.to(torch.bool)
        self.tok.copy_(first)
        self.pos.copy_(next_pos.view(-1, 1))
        self.tokens[:, 0] = first
        self.step_idx.fill_(1)
        self.stopping.fill_(bool(stop))
        self.done.copy_(self._is_stop(first))
        steps = 0
        budget = max_new_tokens - 1
        if not (stop and bool(self.done.all())):
            checks = 0
            while steps < budget:
                # Stop checks after 4, 12, 28, ... steps, then every check_every: short
                # answers waste few steps, long ones sync rarely.
                k = min(self.check_every, 4 << checks, budget - steps)
                checks += 1
                self._run_steps(k)
                steps += k
                if stop and bool(self.done.all()):  # the only host sync while decoding
                    break
        # Each step fed one token into the cache.
        for layer in self.cache.layers:
            layer.length = n + steps
        rows = self.tokens[:, :1 + steps].tolist()
        rows = [r[:max_new_tokens] for r in rows]
        return _cut_rows(rows, self.stop_set) if stop else rows


def _bucket(n: int, multiple: int = 256) -> int:
    return -(-n // multiple) * multiple


def static_greedy_decode(model, embeds: torch.Tensor, attention_mask: torch.Tensor,
                         position_ids: torch.Tensor, max_new_tokens: int,
                         stop: bool = True, timings: dict | None = None) -> list[list[int]]:
    """:meth:`LoRAWrappedModel.greedy_decode` on a static cache. The decoder (cache,
    buffers, captured graph) is kept on the model and reused by later calls with the same
    batch size whose prompt + budget fit its capacity without wasting more than half of it
    (evaluation batches come longest first, so one decoder serves most of them)."""
    B, P = attention_mask.shape
    need = P + max(max_new_tokens, 1)
    dec = getattr(model, "_static_decoder", None)
    if dec is None or dec.batch_size != B or dec.capacity < need \
            or dec.capacity > max(2 * need, _bucket(need)) \
            or dec.dtype != embeds.dtype or dec.compiled != bool(model.decode_compile):
        model._static_decoder = None  # free the old buffers first
        dec = StaticDecoder(model, B, _bucket(need), embeds.dtype)
        model._static_decoder = dec
    dec.reset()
    sync = model.device.type == "cuda"
    t0 = time.perf_counter()
    padded = not bool(attention_mask.all())
    last = dec.prefill(embeds, position_ids, attention_mask if padded else None)
    if sync:
        torch.cuda.synchronize(model.device)
    t1 = time.perf_counter()
    out = dec.decode(last, position_ids[:, -1] + 1, max_new_tokens,
                     valid=attention_mask if padded else None, stop=stop)
    if sync:
        torch.cuda.synchronize(model.device)
    if timings is not None:
        timings["prefill_s"] = t1 - t0
        timings["decode_s"] = time.perf_counter() - t1
    return out


# ---------------------------------------------------------------------------------------
# Conversations that grow turn by turn


@dataclass
class _Cached:
    """What the cache holds: per position (token id, position id); and the contexts whose
    memory placeholders it holds, as (first placeholder index, ids, start)."""

    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    contexts: list[tuple[int, tuple[int, ...], int]] = field(default_factory=list)


def _placeholder_spans(model, enc) -> list[tuple[int, int]]:
    """(first, end) index of each compressed context's placeholders in ``enc.input_ids``
    (contexts appear in order, each as one run of ``num_memory_slots`` placeholders)."""
    if not getattr(model, "compresses_contexts", False) or not enc.contexts:
        return []
    ph, ids = model.placeholder_id, enc.input_ids
    spans, i = [], 0
    for c_ids, _ in enc.contexts:
        while ids[i] != ph:
            i += 1
        n = model.num_memory_slots(len(c_ids))
        spans.append((i, i + n))
        i += n
    return spans


class Conversation:
    """One sequence whose decoder KV cache is kept between calls (an agent conversation).

    :meth:`generate` takes the full prompt of the next turn; the longest prefix that the
    cache already holds (same ids and position ids, and the same compressed contexts) is
    reused, only the rest is encoded (new observations compressed, once) and prefilled,
    then the answer is decoded greedily. Tokens decoded in an earlier turn stay in the
    cache and are reused when the next prompt repeats them at the same positions.
    ``timings`` of each call: ``compress_s`` (encoder on the new contexts), ``prefill_s``
    (the new tokens), ``decode_s``, and counts ``prefill_tokens``, ``reused_tokens``,
    ``cache_tokens`` (held after the turn), ``kv_cache_bytes`` (their keys and values)."""

    def __init__(self, model, capacity: int = 4096, use_graph: bool | None = None,
                 check_every: int = 32):
        reason = static_unsupported_reason(model, capacity)
        if reason:
            raise ValueError(f"Conversation needs the static KV cache: {reason}")
        self.model = model
        self.use_graph = use_graph
        self.check_every = check_every
        self.decoder = StaticDecoder(model, 1, _bucket(capacity), model.dtype, use_graph,
                                     check_every)
        self.cached = _Cached()

    def _grow(self, need: int) -> None:
        old = self.decoder
        n = cache_length(old.cache)
        new = StaticDecoder(self.model, 1, _bucket(max(need, 2 * old.capacity)), old.dtype,
                            self.use_graph, self.check_every)
        for a, b in zip(old.cache.layers, new.cache.layers):
            b.keys[:, :, :n] = a.keys[:, :, :n]
            b.values[:, :, :n] = a.values[:, :, :n]
        set_cache_length(new.cache, n)
        self.decoder = new
        del old

    def _reusable(self, enc, spans) -> int:
        c = self.cached
        k = 0
        limit = min(len(c.ids), len(enc.input_ids))
        while k < limit and c.ids[k] == enc.input_ids[k] and c.pos[k] == enc.position_ids[k]:
            k += 1
        held = {first: (ids, start) for first, ids, start in c.contexts}
        for (first, end), (c_ids, start) in zip(spans, enc.contexts):
            if first >= k:
                break
            if end > k or held.get(first) != (tuple(c_ids), start):
                k = first  # a context only partly cached, or a different one: redo it
                break
        return min(k, len(enc.input_ids) - 1)  # the last prompt token yields the logits

    @torch.no_grad()
    def generate(self, pieces, max_new_tokens: int, stop: bool = True,
                 timings: dict | None = None) -> list[int]:
        m = self.model
        dev = m.device
        sync = dev.type == "cuda"
        enc = m.encode(pieces)
        spans = _placeholder_spans(m, enc)
        k = self._reusable(enc, spans)
        need = len(enc.input_ids) + max_new_tokens
        if need > self.decoder.capacity:
            set_cache_length(self.decoder.cache, k)
            self._grow(need)
        set_cache_length(self.decoder.cache, k)
        t0 = time.perf_counter()
        new_ids = torch.tensor([enc.input_ids[k:]], device=dev)
        new_ctx = [(i, ctx) for i, ((first, _), ctx) in enumerate(zip(spans, enc.contexts))
                   if first >= k]
        if new_ctx:
            memory = m.compress_once([list(c[0]) for _, c in new_ctx],
                                     [c[1] for _, c in new_ctx])
            embeds = m.decoder_embeds(new_ids, memory)
        elif getattr(m, "compresses_contexts", False):
            embeds = m.decoder_embeds(new_ids, m.extra_embeddings.new_zeros(
                (0, m.extra_embeddings.shape[1])))
        else:
            embeds = m.prompt_embeds(new_ids)
        if sync:
            torch.cuda.synchronize(dev)
        # Without an encoder, embedding the new tokens is part of their prefill.
        t1 = time.perf_counter() if getattr(m, "compresses_contexts", False) else t0
        pos = torch.tensor([enc.position_ids[k:]], device=dev)
        with m.adapter(m.decoder_adapter):
            last = self.decoder.prefill(embeds, pos)
            if sync:
                torch.cuda.synchronize(dev)
            t2 = time.perf_counter()
            out = self.decoder.decode(last, pos[:, -1] + 1, max_new_tokens, stop=stop)[0]
        if sync:
            torch.cuda.synchronize(dev)
        t3 = time.perf_counter()
        # What the cache now holds: the prompt, then the generated tokens that were fed.
        n = cache_length(self.decoder.cache)
        fed = self.decoder.tokens[0, :n - len(enc.input_ids)].tolist()
        last_pos = enc.position_ids[-1]
        self.cached = _Cached(
            ids=list(enc.input_ids) + fed,
            pos=list(enc.position_ids) + list(range(last_pos + 1, last_pos + 1 + len(fed))),
            contexts=[(first, tuple(c_ids), start)
                      for (first, _), (c_ids, start) in zip(spans, enc.contexts)])
        if timings is not None:
            timings.update({
                "compress_s": t1 - t0, "prefill_s": t2 - t1, "decode_s": t3 - t2,
                "prefill_tokens": len(enc.input_ids) - k, "reused_tokens": k,
                "cache_tokens": n,
                "kv_cache_bytes": n * kv_bytes_per_token(m.base.config, self.decoder.dtype)})
        return out
