"""Segmenting contexts and assigning position ids for the three layouts.

Notation: a context of ``L`` tokens is split into ``k = ceil(L / (m * r))`` segments of
near-equal length (``m`` = ``mem_size``, ``r`` = ``mean_compression_rate``); segment ``s``
covers context tokens ``[a_s, a_s + n_s)``. Each segment goes through the encoder as
``[BOS?] tokens memory-slots`` and yields ``m`` memory vectors.

Encoder position ids (``b`` = 1 when the tokenizer puts a BOS first, else 0):

``default``
    the model's ordinary positions: ``0 .. b + n_s + m - 1`` over ``[BOS?] tokens slots``.

``linspace`` (the ICAE seed's "position identifiers")
    BOS at 0, context token ``i`` at ``1 + i`` (so ``1..n_s``), memory slot ``j`` at
    ``floor(linspace(1, n_s, m)[j])`` — slots spread evenly over the span they summarise.
    The decoder keeps ordinary positions.

``epl`` (Enhanced Position Layout; Zhao et al., "Position IDs Matter: An Enhanced Position
Layout for Efficient Context Compression in Large Language Models", arXiv 2409.14364, §3)
    *Uniform position distribution*: context tokens keep their global positions across
    segments, ``c + a_s + i``, where ``c >= 1`` is the position at which the context starts
    in the decoder prompt (so position 0 stays free); BOS, when present, sits at 0.
    Memory slot ``j`` of segment ``s`` sits at the centre of the ``j``-th of ``m`` equal
    blocks of that segment's tokens::

        pos(s, j) = c + a_s + floor((j + 1/2) * n_s / m)

    *Consistent position ids*: the decoder gives each memory slot the same id it had in
    the encoder. Text before the memory keeps ordinary positions ``0..c-1``; after a
    context of ``L`` tokens, text continues from ``c + L`` (LM continuation, questions).
    For autoencoding the ``[AE]`` marker takes id 0 and the reconstruction restarts at 1,
    so reconstructed token ``i`` has exactly the id that token had in the encoder.
"""

from __future__ import annotations

import math

import torch

LAYOUTS = ("default", "linspace", "epl")


def num_segments(length: int, mem_size: int, rate: float) -> int:
    if length <= 0:
        return 0
    return math.ceil(length / (mem_size * rate))


def segment_bounds(length: int, mem_size: int, rate: float) -> list[tuple[int, int]]:
    """``(start, length)`` of each segment; lengths differ by at most one token."""
    k = num_segments(length, mem_size, rate)
    if k == 0:
        return []
    base, extra = divmod(length, k)
    bounds, start = [], 0
    for s in range(k):
        n = base + (1 if s < extra else 0)
        bounds.append((start, n))
        start += n
    return bounds


def memory_slot_offsets(n: torch.Tensor, mem_size: int) -> torch.Tensor:
    """EPL: offset of each slot's block centre inside its segment, ``floor((j+1/2) n/m)``.

    ``n``: (S,) segment lengths -> (S, m) integer offsets.
    """
    j = torch.arange(mem_size, device=n.device, dtype=torch.float64)
    return torch.floor((j[None, :] + 0.5) * n[:, None].double() / mem_size).long()


def linspace_slot_positions(n: torch.Tensor, mem_size: int) -> torch.Tensor:
    """Seed layout: ``floor(linspace(1, n, m))`` for each segment length in ``n``."""
    frac = torch.linspace(0, 1, mem_size, device=n.device, dtype=torch.float64)
    return torch.floor(1 + frac[None, :] * (n[:, None].double() - 1)).long()


def encoder_positions(layout: str, n: torch.Tensor, seg_start: torch.Tensor,
                      ctx_start: torch.Tensor, width: int, mem_size: int, bos: bool
                      ) -> torch.Tensor:
    """Position ids for a left-padded encoder batch of segments.

    Row ``r`` holds ``[pad.. BOS? tokens(n_r) slots(m)]`` in ``width`` columns.
    ``seg_start`` is ``a_s`` and ``ctx_start`` is ``c`` (EPL only). Padding gets 0.
    """
    b = int(bos)
    S = n.shape[0]
    col = torch.arange(width, device=n.device)[None, :].expand(S, width)
    used = b + n + mem_size
    first = (width - used)[:, None]                        # first non-pad column
    rel = col - first                                      # 0 at BOS (or first token)
    tok_idx = rel - b                                      # context token index i
    is_tok = (tok_idx >= 0) & (tok_idx < n[:, None])
    slot = tok_idx - n[:, None]                            # memory slot index j
    is_slot = (slot >= 0) & (slot < mem_size)
    pos = torch.zeros(S, width, dtype=torch.long, device=n.device)
    if layout == "default":
        pos = torch.where(rel >= 0, rel, pos)
        return pos
    slot_c = slot.clamp(0, mem_size - 1)
    if layout == "linspace":
        tok_pos = 1 + tok_idx
        slot_pos = linspace_slot_positions(n, mem_size).gather(1, slot_c)
    elif layout == "epl":
        base = (ctx_start + seg_start)[:, None]
        tok_pos = base + tok_idx
        slot_pos = base + memory_slot_offsets(n, mem_size).gather(1, slot_c)
    else:
        raise ValueError(f"unknown position layout {layout!r}")
    pos = torch.where(is_tok, tok_pos, pos)
    pos = torch.where(is_slot, slot_pos, pos)
    return pos


def epl_memory_positions(length: int, ctx_start: int, mem_size: int, rate: float
                         ) -> list[int]:
    """Decoder ids of all memory slots of one context under EPL (same as the encoder's)."""
    out: list[int] = []
    for a, n in segment_bounds(length, mem_size, rate):
        offs = memory_slot_offsets(torch.tensor([n]), mem_size)[0].tolist()
        out.extend(ctx_start + a + o for o in offs)
    return out
