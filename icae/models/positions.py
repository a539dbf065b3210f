"""Segmenting contexts, counting memory slots and assigning position ids for the three
layouts.

Notation: a context of ``L`` tokens is split into ``ceil(L / (m * r))`` segments of
near-equal length (``m`` = ``mem_size``, ``r`` = ``mean_compression_rate``); segment ``s``
covers context tokens ``[a_s, a_s + n_s)`` and is summarised by ``k_s`` memory slots.
Each segment goes through the encoder as ``[BOS?] tokens slots`` and yields ``k_s``
memory vectors (the first ``k_s`` learned slot embeddings).

Slots per segment (``model.slot_rule``):

``proportional`` (default)
    ``k_s = min(m, ceil(n_s / r))``: the effective compression rate is ``r`` for long and
    short contexts alike, and a context never gets more slots than it has tokens. A full
    segment (``n_s = m r``) gets exactly ``m`` slots, as in ICAE and EPL.
``fixed``
    ``k_s = m`` (ICAE's original layout). So that no context gets more slots than tokens,
    contexts shorter than ``m`` tokens stay text (the seed's rule).

Encoder position ids (``b`` = 1 when the tokenizer puts a BOS first, else 0):

``default``
    the model's ordinary positions: ``0 .. b + n_s + k_s - 1`` over ``[BOS?] tokens slots``.

``linspace`` (the ICAE seed's "position identifiers")
    BOS at 0, context token ``i`` at ``1 + i`` (so ``1..n_s``), memory slot ``j`` at
    ``floor(linspace(1, n_s, k_s)[j])`` — slots spread evenly over the span they
    summarise. The decoder keeps ordinary positions.

``epl`` (Enhanced Position Layout; Zhao et al., "Position IDs Matter: An Enhanced Position
Layout for Efficient Context Compression in Large Language Models", arXiv 2409.14364, §3)
    *Uniform position distribution*: context tokens keep their global positions across
    segments, ``c + a_s + i``, where ``c >= 1`` is the position at which the context starts
    in the decoder prompt (so position 0 stays free); BOS, when present, sits at 0.
    Memory slot ``j`` of segment ``s`` sits on the middle token of the ``j``-th of ``k_s``
    equal blocks of that segment's tokens, the *lower* middle one for blocks of even
    length, as in the authors' reference code (1azybug/UPL, ``get_uniform_position_ids``:
    ``x_1 + (r - 1) // 2 + j * r`` with ``x_1 = a_s + 1``)::

        pos(s, j) = c + a_s + ceil((j + 1/2) * n_s / k_s) - 1

    which equals the authors' ``c + a_s + (r - 1) // 2 + j r`` whenever ``n_s = k_s r``
    with an integer ``r``, and extends it to segments that are not a multiple of ``r``.
    *Consistent position ids*: the decoder gives each memory slot the same id it had in
    the encoder. Text before the memory keeps ordinary positions ``0..c-1``; after a
    context of ``L`` tokens, text continues from ``c + L`` (LM continuation, questions).
    For autoencoding the ``[AE]`` marker takes id 0 and the reconstruction restarts at 1,
    so reconstructed token ``i`` has exactly the id that token had in the encoder.
"""

from __future__ import annotations

import math

import torch

from icae.config import SLOT_RULES


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


def segment_slots(n: int, mem_size: int, rate: float, rule: str = "proportional") -> int:
    """Memory slots ``k`` for a segment of ``n`` tokens (see the module docstring)."""
    if rule == "fixed":
        return mem_size
    if rule != "proportional":
        raise ValueError(f"unknown slot rule {rule!r} (one of {', '.join(SLOT_RULES)})")
    return min(mem_size, max(1, math.ceil(n / rate))) if n > 0 else 0


def segments(length: int, mem_size: int, rate: float, rule: str = "proportional"
             ) -> list[tuple[int, int, int]]:
    """``(start, tokens, slots)`` of each segment of a context of ``length`` tokens."""
    return [(a, n, segment_slots(n, mem_size, rate, rule))
            for a, n in segment_bounds(length, mem_size, rate)]


def num_slots(length: int, mem_size: int, rate: float, rule: str = "proportional") -> int:
    """Memory slots of a whole compressed context of ``length`` tokens."""
    return sum(k for _, _, k in segments(length, mem_size, rate, rule))


def memory_slot_offsets(n: torch.Tensor, k: torch.Tensor, width: int) -> torch.Tensor:
    """EPL: offset of slot ``j`` inside its segment, ``ceil((j + 1/2) n / k) - 1``, in exact
    integer arithmetic. ``n``, ``k``: (S,) tokens and slots per segment -> (S, width);
    columns ``j >= k`` are clamped garbage and must be masked by the caller."""
    j = torch.arange(width, device=n.device)[None, :]
    n, k = n[:, None].long(), k[:, None].long().clamp(min=1)
    return (((2 * j + 1) * n + 2 * k - 1) // (2 * k) - 1).clamp(min=0)


def linspace_slot_positions(n: torch.Tensor, k: torch.Tensor, width: int) -> torch.Tensor:
    """Seed layout: ``floor(linspace(1, n, k))[j]`` for each segment, exact integers."""
    j = torch.arange(width, device=n.device)[None, :]
    n, k = n[:, None].long(), k[:, None].long()
    return 1 + (j * (n - 1)) // (k - 1).clamp(min=1)


def encoder_positions(layout: str, n: torch.Tensor, k: torch.Tensor, seg_start: torch.Tensor,
                      ctx_start: torch.Tensor, width: int, bos: bool) -> torch.Tensor:
    """Position ids for a right-padded encoder batch of segments.

    Row ``r`` holds ``[BOS? tokens(n_r) slots(k_r) pad..]`` in ``width`` columns (padding
    last, so causal attention alone keeps every real token from seeing it).
    ``seg_start`` is ``a_s`` and ``ctx_start`` is ``c`` (EPL only). Padding gets 0.
    """
    b = int(bos)
    S = n.shape[0]
    # 0 at BOS (or the first token)
    rel = torch.arange(width, device=n.device)[None, :].expand(S, width)
    used = (b + n + k)[:, None]
    tok_idx = rel - b                                      # context token index i
    is_tok = (tok_idx >= 0) & (tok_idx < n[:, None])
    slot = tok_idx - n[:, None]                            # memory slot index j
    is_slot = (slot >= 0) & (slot < k[:, None])
    pos = torch.zeros(S, width, dtype=torch.long, device=n.device)
    if layout == "default":
        return torch.where(rel < used, rel, pos)
    kmax = max(int(k.max()) if S else 1, 1)
    slot_c = slot.clamp(0, kmax - 1)
    if layout == "linspace":
        tok_pos = 1 + tok_idx
        slot_pos = linspace_slot_positions(n, k, kmax).gather(1, slot_c)
    elif layout == "epl":
        base = (ctx_start + seg_start)[:, None]
        tok_pos = base + tok_idx
        slot_pos = base + memory_slot_offsets(n, k, kmax).gather(1, slot_c)
    else:
        raise ValueError(f"unknown position layout {layout!r}")
    pos = torch.where(is_tok, tok_pos, pos)
    return torch.where(is_slot, slot_pos, pos)


def epl_memory_positions(length: int, ctx_start: int, mem_size: int, rate: float,
                         rule: str = "proportional") -> list[int]:
    """Decoder ids of all memory slots of one context under EPL (same as the encoder's)."""
    out: list[int] = []
    for a, n, k in segments(length, mem_size, rate, rule):
        offs = memory_slot_offsets(torch.tensor([n]), torch.tensor([k]), k)[0].tolist()
        out.extend(ctx_start + a + o for o in offs)
    return out


def context_slots(length: int, mem_size: int, rate: float, rule: str = "proportional",
                  min_compress_len: int = 0) -> int:
    """Memory slots standing for a context of ``length`` tokens, or 0 when it stays text:
    empty, shorter than ``min_compress_len``, or (``fixed`` rule) shorter than ``mem_size``
    so that it would get more slots than tokens."""
    if length <= 0 or length < min_compress_len:
        return 0
    if rule == "fixed" and length < mem_size:
        return 0
    return num_slots(length, mem_size, rate, rule)
