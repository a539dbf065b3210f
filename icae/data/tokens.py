"""Token helpers shared by the data builders (no special tokens, no length warnings)."""

from __future__ import annotations

from typing import Sequence


def encode(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def encode_batch(tokenizer, texts: Sequence[str], batch_size: int = 256) -> list[list[int]]:
    out: list[list[int]] = []
    texts = list(texts)
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        nonempty = [t for t in chunk if t]
        ids = (tokenizer(nonempty, add_special_tokens=False, verbose=False)["input_ids"]
               if nonempty else [])
        it = iter(ids)
        out.extend(list(next(it)) if t else [] for t in chunk)
    return out


def decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)


def truncate_text(tokenizer, text: str, max_tokens: int, keep: str = "head",
                  marker: str = "\n[... {n} tokens cut ...]\n", ids: Sequence[int] | None = None
                  ) -> tuple[str, int, int]:
    """``text`` cut to at most ``max_tokens`` tokens; returns ``(text, tokens cut, tokens
    left)``. ``ids``: the text's tokens when already known.

    ``keep="head"`` keeps the beginning; ``keep="both"`` keeps the beginning and the end with
    ``marker`` (``{n}`` = tokens cut) between them, which suits command output whose last
    lines (errors, return codes) matter as much as the first.
    """
    ids = list(ids) if ids is not None else encode(tokenizer, text)
    if len(ids) <= max_tokens:
        return text, 0, len(ids)
    if keep == "head":
        out = decode(tokenizer, ids[:max_tokens])
        n = len(encode(tokenizer, out))
        if n <= max_tokens:
            return out, len(ids) - max_tokens, n
    slack = 0
    # Digits of n <= len(ids): the marker for len(ids) is (about) the longest one.
    mark_len = len(encode(tokenizer, marker.format(n=len(ids))))
    for _ in range(8):
        if keep == "head":
            out = decode(tokenizer, ids[:max(1, max_tokens - slack)])
            cut = len(ids) - max(1, max_tokens - slack)
        else:
            budget = max(2, max_tokens - mark_len - slack)
            head, tail = (budget + 1) // 2, budget // 2
            cut = len(ids) - head - tail
            out = decode(tokenizer, ids[:head]) + marker.format(n=cut) + decode(
                tokenizer, ids[len(ids) - tail:])
        n = len(encode(tokenizer, out))
        if n <= max_tokens:
            return out, cut, n
        slack += n - max_tokens  # tokens merged differently at the seams; leave more room
    out = decode(tokenizer, ids[: max_tokens // 2])
    return out, len(ids) - max_tokens // 2, len(encode(tokenizer, out))
