"""Compressed memory computed once per context and reused for every question about it.

ICAE's setting (Ge et al., §1): a context is compressed once and its memory slots serve
many prompts. :class:`MemoryCache` maps a context (its token ids and the decoder position
at which it starts, which EPL's encoder positions depend on) to its memory vectors; an
:class:`~icae.models.icae.ICAE` with ``model.memory_cache`` set encodes only the contexts
it has not seen (all of them in one batched encoder call) and serves the rest from the
cache. SQuAD has about five questions per paragraph, so evaluation encodes each paragraph
once instead of five times.

The cache holds inference results of fixed weights: it is bypassed whenever gradients are
enabled, and must be cleared (:meth:`MemoryCache.clear`) after the weights change.
Entries are evicted least recently used first beyond ``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class MemoryCache:
    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.encoded_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(ids, start: int) -> tuple:
        return (tuple(int(t) for t in ids), int(start))

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "hits": self.hits,
                "misses": self.misses, "encoded_tokens": self.encoded_tokens}

    def _put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        self._entries[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def compress(self, model, contexts: list[list[int]], starts: list[int] | None = None
                 ) -> torch.Tensor:
        """``model.compress_flat(contexts, starts)``, encoding only unseen contexts: the
        missing ones go through one :meth:`~icae.models.icae.ICAE.encoder_inputs` (host-side
        chunks) and one :meth:`~icae.models.icae.ICAE.run_encoder` call."""
        starts = list(starts) if starts is not None else [1] * len(contexts)
        if torch.is_grad_enabled():
            return model.run_encoder(model.encoder_inputs(contexts, starts))
        keys = [self.key(c, s) for c, s in zip(contexts, starts)]
        missing: dict[tuple, tuple[list[int], int]] = {}
        for k, c, s in zip(keys, contexts, starts):
            if k not in self._entries and k not in missing:
                missing[k] = (list(c), int(s))
        fresh: dict[tuple, torch.Tensor] = {}
        if missing:
            todo = list(missing.values())
            flat = model.run_encoder(model.encoder_inputs([c for c, _ in todo],
                                                          [s for _, s in todo]))
            sizes = [model.num_memory_slots(len(c)) for c, _ in todo]
            for k, part in zip(missing, torch.split(flat, sizes)):
                fresh[k] = part.clone()  # not a view that would keep the whole batch alive
                self._put(k, fresh[k])
            self.encoded_tokens += sum(len(c) for c, _ in todo)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        parts = []
        for k in keys:
            if k in fresh:
                parts.append(fresh[k])
            else:
                self._entries.move_to_end(k)
                parts.append(self._entries[k])
        if not parts:
            return model.run_encoder(model.encoder_inputs([], []))
        return torch.cat(parts)
