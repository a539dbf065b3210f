"""Agent trajectories: JSONL of OpenAI-style chats (``{"messages": [{"role", "content"},
...]}``, as SWE-agent / mini-swe-agent / SWE-smith write them).

A valid trajectory has an optional leading ``system`` message, then strictly alternating
``user`` / ``assistant`` messages starting with ``user``, non-empty string contents and at
least one assistant message. Anything else is an error naming ``file:line`` and the message
index (or a counted skip with ``data.skip_bad_lines``).

Prepared record::

    {"id", "messages": [{"role", "content", "compress": bool}, ...], "cut": {...},
     "num_tokens": int}

The system prompt and the first user/assistant exchange stay text; every later ``user``
message (an observation) with at least ``compress_threshold`` tokens has ``compress: true``
(ICAE compresses it, and the memory accumulates over the turns); assistant messages stay
text and are the targets. Caps, applied in this order and reported in ``cut``:

- ``max_turns``: messages after the ``max_turns``-th assistant message are dropped;
- messages after the last assistant message are dropped (no target follows them);
- user / system messages longer than ``max_observation_tokens`` keep their first and last
  tokens around a ``[... N tokens cut ...]`` line (system: the first tokens only);
  assistant messages longer than ``max_target_tokens`` keep their first tokens;
- ``max_total_tokens``: later turns are dropped once the capped messages exceed it (the
  first exchange always stays).

:func:`turn_examples` gives the per-turn view a trainer sees: for the k-th assistant
message, the messages before it (with their ``compress`` flags) and the target text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from icae.config import TrajectoryDataConfig
from icae.data.io import DataError, SkipLog, bad_record, iter_jsonl, seeded_subset
from icae.data.tokens import encode_batch, truncate_text

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


def check_messages(messages) -> str | None:
    """The first problem with a message list, or None when it is a valid trajectory."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    expected = "user"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"message {i} is not an object"
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            return f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"message {i} ({role}): 'content' must be a string"
        if not content.strip():
            return f"message {i} ({role}): empty content"
        if role == "system":
            if i != 0:
                return f"message {i}: a system message may only come first"
            continue
        if role != expected:
            return (f"message {i}: roles must alternate user/assistant after the optional "
                    f"system message; expected {expected}, got {role}")
        expected = "assistant" if role == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message (nothing to learn from)"
    return None


def load_trajectories(path: str | Path, *, skip_bad_lines: bool = False,
                      skips: SkipLog | None = None, limit: int | None = None,
                      seed: int = 0) -> list[dict]:
    """Validated trajectories of a JSONL(.gz) file (other fields of a line are kept).
    ``limit``: that many, drawn with ``seed`` and kept in file order."""
    skips = skips if skips is not None else SkipLog()
    out = []
    for lineno, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, skips=skips):
        where = f"{path}:{lineno}"
        if "messages" not in row:
            bad_record("missing field 'messages'", where, skip_bad_lines, skips,
                       "missing_field")
            continue
        problem = check_messages(row["messages"])
        if problem:
            bad_record(problem, where, skip_bad_lines, skips, "bad_messages")
            continue
        rec = dict(row)
        rec["id"] = str(row["id"]) if isinstance(row.get("id"), (str, int)) else \
            f"{Path(path).name}:{lineno}"
        rec["messages"] = [{"role": m["role"], "content": m["content"]}
                           for m in row["messages"]]
        out.append(rec)
    if not out:
        raise DataError(f"{path}: no valid trajectories (skipped: {dict(skips.counts)})")
    return seeded_subset(out, limit, seed)


def _first_exchange_end(messages: list[dict]) -> int:
    """Index of the first assistant message."""
    return next(i for i, m in enumerate(messages) if m["role"] == "assistant")


def prepare_trajectory(record: dict, tokenizer, tcfg: TrajectoryDataConfig) -> dict | None:
    """The capped, flagged record (see the module docstring); None if no turn is left."""
    messages = [dict(m) for m in record["messages"]]
    cut = {"turns_dropped": 0, "messages_dropped": 0, "messages_truncated": 0,
           "tokens_cut": 0, "truncated": []}
    n_assistant = sum(m["role"] == "assistant" for m in messages)

    if tcfg.max_turns is not None and n_assistant > tcfg.max_turns:
        seen = 0
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                seen += 1
                if seen == tcfg.max_turns:
                    cut["messages_dropped"] += len(messages) - i - 1
                    messages = messages[: i + 1]
                    break
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if last < len(messages) - 1:
        cut["messages_dropped"] += len(messages) - last - 1
        messages = messages[: last + 1]

    counts = []
    all_ids = encode_batch(tokenizer, [m["content"] for m in messages])
    for i, (m, ids) in enumerate(zip(messages, all_ids)):
        if m["role"] == "assistant":
            limit, keep = tcfg.max_target_tokens, "head"
        else:
            limit = tcfg.max_observation_tokens
            keep = "head" if m["role"] == "system" else "both"
        text, n_cut, n_tokens = truncate_text(tokenizer, m["content"], limit, keep, ids=ids)
        if n_cut:
            cut["messages_truncated"] += 1
            cut["tokens_cut"] += n_cut
            cut["truncated"].append({"index": i, "role": m["role"], "tokens_cut": n_cut})
            m["content"] = text
        counts.append(n_tokens)

    first = _first_exchange_end(messages)
    if tcfg.max_total_tokens is not None and sum(counts) > tcfg.max_total_tokens:
        total, end = 0, first + 1
        for i, n in enumerate(counts):
            total += n
            if total > tcfg.max_total_tokens:
                break
            if messages[i]["role"] == "assistant":
                end = max(end, i + 1)
        cut["messages_dropped"] += len(messages) - end
        messages, counts = messages[:end], counts[:end]

    kept_assistant = sum(m["role"] == "assistant" for m in messages)
    cut["turns_dropped"] = n_assistant - kept_assistant
    for i, m in enumerate(messages):
        m["compress"] = bool(m["role"] == "user" and i > first
                             and counts[i] >= tcfg.compress_threshold)
    return {"id": record["id"], "messages": messages, "cut": cut, "num_tokens": sum(counts)}


def turn_examples(record: dict) -> list[dict]:
    """Per-turn view: for the k-th assistant message, ``{"id", "turn": k, "message_index",
    "messages": the messages before it (with compress flags), "target": its text,
    "compressed": indices of the earlier messages to compress}``."""
    out = []
    k = 0
    msgs = record["messages"]
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        out.append({"id": f"{record['id']}#{k}", "turn": k, "message_index": i,
                    "messages": msgs[:i], "target": m["content"],
                    "compressed": [j for j in range(i) if msgs[j].get("compress")]})
        k += 1
    return out


def _split_summary(records: list[dict], read: int, dropped: int, skips: SkipLog) -> dict:
    msgs = [m for r in records for m in r["messages"]]
    return {
        "trajectories_read": read, "trajectories": len(records),
        "dropped_no_turn_left": dropped, "skipped": skips.as_dict(),
        "messages": len(msgs),
        "turns": sum(m["role"] == "assistant" for m in msgs),
        "compressed_messages": sum(bool(m.get("compress")) for m in msgs),
        "tokens": sum(r["num_tokens"] for r in records),
        "cut": {
            "trajectories_with_cuts": sum(
                1 for r in records if r["cut"]["messages_truncated"] or
                r["cut"]["messages_dropped"]),
            "messages_truncated": sum(r["cut"]["messages_truncated"] for r in records),
            "tokens_cut": sum(r["cut"]["tokens_cut"] for r in records),
            "messages_dropped": sum(r["cut"]["messages_dropped"] for r in records),
            "turns_dropped": sum(r["cut"]["turns_dropped"] for r in records),
        },
    }


def build_trajectory_sets(tcfg: TrajectoryDataConfig, tokenizer, seed: int, *,
                          skip_bad_lines: bool = False) -> tuple[list[dict], list[dict], dict]:
    """``(train, eval, summary)`` from ``train_file`` / ``eval_file``."""
    if not tcfg.train_file and not tcfg.eval_file:
        raise DataError("data.trajectories: give train_file and/or eval_file")
    sets, summary = {}, {}
    for split, path, limit, split_seed in (
            ("train", tcfg.train_file, tcfg.max_trajectories_train, seed),
            ("eval", tcfg.eval_file, tcfg.max_trajectories_eval, seed + 1)):
        if not path:
            continue
        skips = SkipLog()
        raw = load_trajectories(path, skip_bad_lines=skip_bad_lines, skips=skips, limit=limit,
                                seed=split_seed)
        out, dropped = [], 0
        for rec in raw:
            prepared = prepare_trajectory(rec, tokenizer, tcfg)
            if prepared is None:
                dropped += 1
                continue
            out.append(prepared)
        if not out:
            raise DataError(f"{path}: no trajectory is left after the caps")
        sets[split] = out
        summary[split] = {"source": str(path), **_split_summary(out, len(raw), dropped, skips)}
    if tcfg.train_file and tcfg.eval_file:
        overlap = {r["id"] for r in sets["train"]} & {r["id"] for r in sets["eval"]}
        if overlap:
            raise DataError(f"data.trajectories: {len(overlap)} trajectory ids are in both "
                            f"train_file and eval_file (e.g. {sorted(overlap)[0]})")
    return sets.get("train", []), sets.get("eval", []), summary
