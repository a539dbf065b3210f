"""What the evaluated model sees of each context: ICAE's memory, or the baselines' text.

The plain LLM reads every context (a :class:`~icae.models.templates.Context` piece) as text.
The baselines change only those pieces (:class:`ContextPolicy`): ``truncate`` keeps the
*first* tokens of each context, as many as ICAE has memory slots for it; ``no_context``
drops them (for QA the user message is then the instruction and the question alone).
"""

from __future__ import annotations

from typing import Callable

from icae.models.templates import Context, Piece


def icae_slot_rule(model_cfg) -> tuple[Callable[[int], bool], Callable[[int], int]]:
    """ICAE's own ``compresses`` and ``num_memory_slots`` for ``model_cfg``, without building
    an ICAE: the methods of :class:`icae.models.icae.ICAE` are called on a stand-in that
    has the attributes they read (``cfg``, ``mem_size``, ``rate``, ``layout``), so the
    truncate baseline and the token accounting follow whatever rule ICAE implements."""
    from types import SimpleNamespace

    from icae.models.icae import ICAE

    proxy = SimpleNamespace(cfg=model_cfg, mem_size=model_cfg.mem_size,
                            rate=model_cfg.mean_compression_rate,
                            layout=model_cfg.position_layout,
                            slot_rule=model_cfg.slot_rule,
                            min_compress_len=model_cfg.min_compress_len)
    # ICAE.compresses calls self.num_memory_slots: bind it on the stand-in too.
    proxy.num_memory_slots = lambda n: ICAE.num_memory_slots(proxy, n)
    return (lambda n: bool(ICAE.compresses(proxy, n)),
            lambda n: int(ICAE.num_memory_slots(proxy, n)))


class ContextPolicy:
    """How many decoder positions stand for a context, and the baseline's edits.

    Whether a context is compressed and into how many slots is ICAE's decision
    (``ICAE.compresses`` / ``ICAE.num_memory_slots``, taken from ``model`` when it is an
    ICAE, else through :func:`icae_slot_rule`), never a formula of its own."""

    def __init__(self, model_cfg, baseline: str = "none", model=None):
        self.is_icae = model_cfg.model_type == "icae"
        self.mem_size = model_cfg.mem_size
        self.rate = model_cfg.mean_compression_rate
        self.min_len = model_cfg.min_compress_len
        self.slot_rule = model_cfg.slot_rule
        self.baseline = baseline
        if model is not None and getattr(model, "compresses_contexts", False):
            self._compresses, self._slots = model.compresses, model.num_memory_slots
        else:
            self._compresses, self._slots = icae_slot_rule(model_cfg)

    def eligible(self, length: int) -> bool:
        """ICAE would compress this context (``ICAE.compresses``)."""
        return length > 0 and self._compresses(length)

    def compresses(self, length: int) -> bool:
        return self.is_icae and self.eligible(length)

    def memory_slots(self, length: int) -> int:
        """Slots ICAE uses for a context (``ICAE.num_memory_slots``), 0 if kept as text."""
        if not self.eligible(length):
            return 0
        return self._slots(length)

    def visible(self, length: int) -> int:
        """Decoder positions that stand for a context of ``length`` tokens. The truncate
        baseline keeps as many tokens as ICAE has slots for that context (all of a context
        ICAE keeps as text; never more tokens than the context has)."""
        if self.baseline == "no_context":
            return 0
        if self.baseline == "truncate":
            return min(length, self.memory_slots(length)) if self.eligible(length) else length
        if self.is_icae and self.eligible(length):
            return self.memory_slots(length)
        return length

    def apply(self, pieces: list[Piece]) -> list[Piece]:
        if self.baseline == "none":
            return pieces
        out: list[Piece] = []
        for p in pieces:
            if isinstance(p, Context):
                if self.baseline == "no_context":
                    continue
                p = Context(tuple(p.ids[: self.visible(len(p.ids))]))  # first tokens
            out.append(p)
        return out

    def account(self, lengths: list[int]) -> dict:
        ctx = sum(lengths)
        mem = sum(self.visible(n) for n in lengths)
        slots = sum(self.memory_slots(n) for n in lengths if self.compresses(n))
        return {"context_tokens": ctx, "memory_tokens": mem, "memory_slots": slots,
                "compression_rate": _rate(ctx, mem),
                "contexts": len(lengths),
                "contexts_compressed": sum(1 for n in lengths if self.compresses(n))}


def _rate(original: int, kept: int) -> float | None:
    if kept == 0:
        return None
    return original / kept
