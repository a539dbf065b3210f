"""Pre-training data: text sources -> ICAE autoencoding / language-modelling examples.

Sources (``data.pretrain.sources`` / ``eval_sources``, each a :class:`~icae.config.TextSource`):

- a ``.txt`` file (one document), a ``.jsonl`` / ``.jsonl.gz`` file (one document per line,
  text in ``text_field``; ``id`` and ``source`` fields are used when present), or a folder
  holding such files (read recursively, in sorted order);
- a Hugging Face dataset (``hf_dataset``, ``hf_config``, ``split``, ``streaming``), read with
  ``datasets.load_dataset`` the way the ICAE seed reads ``DKYoon/SlimPajama-6B``.

Examples follow ICAE: documents are shuffled through a buffer, each kept document gives a
context span of about ``min_len`` tokens (drawn in ``min_len * (1 +- len_jitter)``) at a
random offset; with probability ``lm_ratio`` the example is language modelling and the
tokens right after the span (``lm_target_len``, default the span's length) are its target,
otherwise it is autoencoding (the target is the context itself). A document too short for
an LM example becomes an AE example (counted as ``lm_fallback_ae``); one shorter than the
smallest span is skipped and counted (``skip_short``) or is an error. Building stops once
the examples hold ``token_num`` tokens (context + target). The eval set comes from
``eval_sources`` or, without them, from the first shuffled documents (held out by
document, so no document feeds both sets). Everything is deterministic for a seed.

Long documents: memory stays bounded. Only a window of a document is tokenized: at most
``_CHARS_PER_TOKEN * (the tokens its examples can use)`` characters (and at least
``_MIN_WINDOW_CHARS``), taken at a seeded random offset (from the start when a document
gives several examples), snapped to whitespace. Documents cut this way are counted
(``long_documents_windowed``). Tokenizing a 54 MB document whole took 10.8 GB of RAM.

Record: ``{"id", "task": "ae"|"lm", "context_ids", "continuation_ids", "source"}``.
"""

from __future__ import annotations

import logging
import random
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from icae.config import MAX_NUM_PROC, PretrainDataConfig, TextSource
from icae.data.io import DataError, SkipLog, bad_record, iter_jsonl, read_text

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")
# Far above the characters per token of any text (about 4 for prose, 3 for code), so a
# window always holds the tokens the examples need.
_CHARS_PER_TOKEN = 32
_MIN_WINDOW_CHARS = 200_000


@dataclass
class Document:
    id: str
    text: str
    source: str
    where: str = ""  # file:line, for error messages


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in (".jsonl.gz", ".jsonl", ".txt"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def _files_of(path: Path, label: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and _suffix(p) in TEXT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{label}: folder {path} holds no {', '.join(TEXT_SUFFIXES)} files")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{label}: {path} does not exist")
    if _suffix(path) not in TEXT_SUFFIXES:
        raise DataError(f"{label}: {path}: unsupported file type (expected "
                        f"{', '.join(TEXT_SUFFIXES)} or a folder)")
    return [path]


def _iter_file(path: Path, src: TextSource, skip_bad_lines: bool, skips: SkipLog
               ) -> Iterator[Document]:
    if _suffix(path) == ".txt":
        text = read_text(path)
        if not text.strip():
            bad_record("the file is empty", str(path), skip_bad_lines, skips, "empty_file")
            return
        yield Document(id=path.stem, text=text, source=f"file:{path.name}", where=str(path))
        return
    records = 0
    for lineno, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, skips=skips):
        records += 1
        where = f"{path}:{lineno}"
        text = row.get(src.text_field)
        if text is None:
            bad_record(f"missing text field {src.text_field!r} (set text_field in the "
                       "source to the field holding the text)", where, skip_bad_lines, skips,
                       "missing_field")
            continue
        if not isinstance(text, str):
            bad_record(f"field {src.text_field!r} must be a string, got "
                       f"{type(text).__name__}", where, skip_bad_lines, skips, "missing_field")
            continue
        doc_id = row.get("id")
        doc_id = str(doc_id) if isinstance(doc_id, (str, int)) else f"{path.name}:{lineno}"
        source = row.get("source") if isinstance(row.get("source"), str) else path.name
        yield Document(id=doc_id, text=text, source=source, where=where)
    if records == 0:
        bad_record("the file is empty (no JSON lines)", str(path), skip_bad_lines, skips,
                   "empty_file")


def _iter_hf(src: TextSource, label: str) -> Iterator[Document]:
    try:
        import datasets  # lazy: slow import

        ds = datasets.load_dataset(src.hf_dataset, src.hf_config, split=src.split,
                                   streaming=src.streaming)
    except Exception as exc:  # noqa: BLE001 - re-raised with the config key
        raise DataError(
            f"{label}: cannot load Hugging Face dataset {src.hf_dataset!r} (config "
            f"{src.hf_config!r}, split {src.split!r}): {type(exc).__name__}: {exc}. Check the "
            "name and split; without access to the Hugging Face hub, download the data "
            "elsewhere and give a local path instead") from exc
    name = src.hf_dataset if src.hf_config is None else f"{src.hf_dataset}/{src.hf_config}"
    for i, row in enumerate(ds):
        text = row.get(src.text_field)
        if not isinstance(text, str):
            raise DataError(f"{label}: {name} row {i}: no string field {src.text_field!r} "
                            f"(fields: {sorted(row)}); set text_field")
        doc_id = row.get("id")
        doc_id = str(doc_id) if isinstance(doc_id, (str, int)) else f"{name}:{src.split}:{i}"
        yield Document(id=doc_id, text=text, source=f"hf:{name}", where=f"{name} row {i}")


def iter_source(src: TextSource, *, label: str = "source", skip_bad_lines: bool = False,
                skips: SkipLog | None = None) -> Iterator[Document]:
    """The documents of one configured source, in a fixed order."""
    skips = skips if skips is not None else SkipLog()
    if (src.path is None) == (src.hf_dataset is None):
        raise DataError(f"{label}: give exactly one of path or hf_dataset")
    if src.hf_dataset is not None:
        yield from _iter_hf(src, label)
        return
    for path in _files_of(Path(src.path), label):
        yield from _iter_file(path, src, skip_bad_lines, skips)


def iter_documents(sources: list[TextSource], *, label: str = "data.pretrain.sources",
                   skip_bad_lines: bool = False, skips: SkipLog | None = None
                   ) -> Iterator[Document]:
    for i, src in enumerate(sources):
        yield from iter_source(src, label=f"{label}[{i}]", skip_bad_lines=skip_bad_lines,
                               skips=skips)


def shuffle_buffered(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """Streaming shuffle (as ``datasets``' ``shuffle(buffer_size)``): deterministic for a
    given ``rng``; ``buffer_size <= 1`` keeps the order."""
    if buffer_size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def _as_document(item: Any, index: int) -> Document:
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        return Document(id=f"doc{index}", text=item, source="text", where=f"document {index}")
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return Document(id=str(item.get("id", f"doc{index}")), text=item["text"],
                        source=str(item.get("source", "text")),
                        where=str(item.get("where", f"document {index}")))
    raise TypeError(f"document {index}: expected a Document, a str or a dict with 'text', "
                    f"got {type(item).__name__}")


@dataclass
class PretrainStats:
    documents_read: int = 0
    documents_used: int = 0
    examples_ae: int = 0
    examples_lm: int = 0
    lm_fallback_ae: int = 0
    tokens: int = 0
    long_documents_windowed: int = 0
    tokenized: int = 0  # tokens the tokenizer produced (every document read)
    skips: SkipLog = field(default_factory=SkipLog)

    def as_dict(self) -> dict:
        return {"documents_read": self.documents_read, "documents_used": self.documents_used,
                "documents_skipped": self.skips.as_dict(),
                "examples": self.examples_ae + self.examples_lm, "ae": self.examples_ae,
                "lm": self.examples_lm, "lm_fallback_ae": self.lm_fallback_ae,
                "tokens": self.tokens, "long_documents_windowed": self.long_documents_windowed}


def _ints(ids) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _doc_examples(doc: Document, ids, pcfg: PretrainDataConfig, seed: int,
                  stats: PretrainStats) -> list[dict]:
    rng = random.Random(f"{seed}:{doc.id}")
    lo = max(1, int(pcfg.min_len * (1 - pcfg.len_jitter)))
    hi = max(lo, int(round(pcfg.min_len * (1 + pcfg.len_jitter))))
    out: list[dict] = []
    pos = None
    for k in range(pcfg.max_examples_per_doc):
        span = rng.randint(lo, hi)
        want_lm = rng.random() < pcfg.lm_ratio
        target = pcfg.lm_target_len or span
        if pos is None:  # first example: a random offset (only one example) or the start
            if len(ids) < lo:
                return out
            span = min(span, len(ids))
            need = span + target if want_lm and len(ids) >= span + target else span
            pos = rng.randint(0, len(ids) - need) if pcfg.max_examples_per_doc == 1 else 0
        remaining = len(ids) - pos
        if remaining < lo:
            break
        span = min(span, remaining)
        if want_lm and remaining >= span + target:
            ctx, cont = ids[pos:pos + span], ids[pos + span:pos + span + target]
            pos += span + target
            task = "lm"
            stats.examples_lm += 1
        else:
            if want_lm:
                stats.lm_fallback_ae += 1
            ctx, cont = ids[pos:pos + span], []
            pos += span
            task = "ae"
            stats.examples_ae += 1
        stats.tokens += len(ctx) + len(cont)
        out.append({"id": f"{doc.id}#{k}", "task": task, "context_ids": _ints(ctx),
                    "continuation_ids": _ints(cont), "source": doc.source})
    return out


def window_text(doc: Document, pcfg: PretrainDataConfig, seed: int) -> str | None:
    """The part of a long document to tokenize (None: the whole document)."""
    hi = max(1, int(round(pcfg.min_len * (1 + pcfg.len_jitter))))
    need = pcfg.max_examples_per_doc * (hi + (pcfg.lm_target_len or hi))
    limit = max(_MIN_WINDOW_CHARS, _CHARS_PER_TOKEN * need)
    text = doc.text
    if len(text) <= limit:
        return None
    start = 0
    if pcfg.max_examples_per_doc == 1:
        start = random.Random(f"{seed}:{doc.id}:window").randint(0, len(text) - limit)
        space = text.find(" ", start, start + 1000)
        start = space + 1 if space >= 0 else start
    end = min(len(text), start + limit)
    space = text.rfind(" ", max(start, end - 1000), end)
    return text[start:space if space > start else end]


def _encode_block(tokenizer, texts: list[str]) -> list:
    """The token ids of ``texts`` (one batch through the fast tokenizer), as uint32
    arrays: compact to send between processes and to store."""
    import numpy as np

    from icae.data.tokens import encode_batch

    return [np.asarray(ids, dtype=np.uint32)
            for ids in encode_batch(tokenizer, texts, max(1, len(texts)))]


_WORKER_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    import os

    # One thread per worker: the workers are the parallelism (the fast tokenizer would
    # otherwise start a thread per core in each of them).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _worker_encode(texts: list[str]) -> list:
    return _encode_block(_WORKER_TOKENIZER, texts)


# Blocks read ahead of the consumer, whatever the worker count: how far the sources are
# read (and the bad lines counted there) must not depend on it. More workers than this
# would idle, hence data.num_proc's maximum.
AHEAD_BLOCKS = MAX_NUM_PROC


def _encoded_blocks(blocks: Iterable[tuple[Any, list[str]]], tokenizer, num_proc: int
                    ) -> Iterator[tuple[Any, list]]:
    """``(item, token ids of its texts)`` for every ``(item, texts)`` of ``blocks``, in
    order. With ``num_proc > 1`` the blocks are tokenized in that many processes; at most
    :data:`AHEAD_BLOCKS` blocks are in flight (memory stays bounded)."""
    from collections import deque

    pool = None
    if num_proc > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fork would copy this process' tokenizer thread pool state (the fast
        # tokenizer then warns and may deadlock) and every buffered document.
        pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(tokenizer,))

    def done(entry):
        item, job = entry
        return item, (job.result() if pool is not None else _encode_block(tokenizer, job))

    pending: deque = deque()
    try:
        for item, texts in blocks:
            pending.append((item, pool.submit(_worker_encode, texts) if pool is not None
                            else texts))
            if len(pending) >= AHEAD_BLOCKS:
                yield done(pending.popleft())
        while pending:
            yield done(pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# Documents per tokenizer batch (and per block handed to a worker process).
TOKENIZE_BLOCK = 64


def _tokenized(stream: Iterable[Document], tokenizer, pcfg: PretrainDataConfig, seed: int,
               block: int | None = None, num_proc: int = 1
               ) -> Iterator[tuple[Document, Any, bool]]:
    """``(document, token ids (uint32 array), windowed)`` in stream order. A long document
    is tokenized through its bounded window (:func:`window_text`); blocks of documents go
    to the fast tokenizer together (in this process it encodes a batch on all cores),
    or to ``num_proc`` worker processes."""

    block = block or TOKENIZE_BLOCK

    def blocks():
        buf: list[tuple[Document, str | None]] = []
        for doc in stream:
            buf.append((doc, window_text(doc, pcfg, seed)))
            if len(buf) == block:
                yield buf, [d.text if w is None else w for d, w in buf]
                buf = []
        if buf:
            yield buf, [d.text if w is None else w for d, w in buf]

    for buf, encoded in _encoded_blocks(blocks(), tokenizer, num_proc):
        for (doc, w), ids in zip(buf, encoded):
            yield doc, ids, w is not None


def iter_doc_examples(docs: Iterable, tokenizer, pcfg: PretrainDataConfig, seed: int,
                      stats: PretrainStats | None = None, shuffle: bool = True,
                      doc_ids: list | None = None, num_proc: int = 1
                      ) -> Iterator[tuple[Document, list[dict]]]:
    """``(document, its examples)`` for every document kept, in shuffled order;
    ``doc_ids.append`` receives each kept document's token ids (a uint32 array)."""
    stats = stats if stats is not None else PretrainStats()
    lo = max(1, int(pcfg.min_len * (1 - pcfg.len_jitter)))
    stream = (_as_document(d, i) for i, d in enumerate(docs))
    if shuffle:
        stream = shuffle_buffered(stream, pcfg.shuffle_buffer, random.Random(seed))
    for doc, ids, windowed in _tokenized(stream, tokenizer, pcfg, seed, num_proc=num_proc):
        stats.documents_read += 1
        stats.tokenized += len(ids)
        if windowed:
            stats.long_documents_windowed += 1
        if len(ids) < lo:
            message = (f"document {doc.id!r} has {len(ids)} tokens, fewer than the {lo} a "
                       f"context span needs (data.pretrain.min_len={pcfg.min_len}, "
                       f"len_jitter={pcfg.len_jitter})")
            if not pcfg.skip_short:
                raise DataError(f"{doc.where}: {message}; set data.pretrain.skip_short=true "
                                "to skip short documents")
            stats.skips.add("too_short", f"{doc.where}: {message}")
            continue
        examples = _doc_examples(doc, ids, pcfg, seed, stats)
        stats.documents_used += 1
        if doc_ids is not None:
            doc_ids.append(ids)
        yield doc, examples


def _progress(total: int | None, desc: str, enabled: bool):
    from icae.progress import progress

    # A bar on a terminal, elapsed / throughput / ETA lines in a log file.
    return progress(total, desc, enabled, unit="tok", unit_scale=True)


@dataclass
class ExampleCounts:
    """Examples, AE / LM examples and tokens (context + target) of a set."""

    examples: int = 0
    ae: int = 0
    lm: int = 0
    tokens: int = 0

    def add(self, ex: dict) -> int:
        n = len(ex["context_ids"]) + len(ex["continuation_ids"])
        self.examples += 1
        self.ae += ex["task"] == "ae"
        self.lm += ex["task"] != "ae"
        self.tokens += n
        return n

    def as_dict(self) -> dict:
        return {"examples": self.examples, "ae": self.ae, "lm": self.lm,
                "tokens": self.tokens}


def build_pretrain_examples(docs_iter: Iterable, tokenizer, pcfg: PretrainDataConfig,
                            seed: int, *, token_budget: int | None = None,
                            max_examples: int | None = None, stats: PretrainStats | None = None,
                            progress: bool = False, desc: str = "pretrain",
                            doc_ids: list | None = None, num_proc: int = 1,
                            counts: ExampleCounts | None = None, keep: bool = True
                            ) -> list[dict]:
    """ICAE examples from ``docs_iter`` (:class:`Document`, ``{"text", "id"?, "source"?}``
    dicts or plain strings) until ``token_budget`` (default ``pcfg.token_num``) tokens or
    ``max_examples`` examples. Deterministic for ``seed``. ``counts`` receives the
    examples' counts; ``keep=False`` returns none of them (only the counts matter)."""
    stats = stats if stats is not None else PretrainStats()
    counts = counts if counts is not None else ExampleCounts()
    budget = pcfg.token_num if token_budget is None else token_budget
    out: list[dict] = []
    stream = iter_doc_examples(docs_iter, tokenizer, pcfg, seed, stats, doc_ids=doc_ids,
                               num_proc=num_proc)
    # closing the stream stops the tokenizer workers (if any) now, not when collected
    with closing(stream), _progress(budget, desc, progress) as bar:
        for _, examples in stream:
            for ex in examples:
                bar.update(counts.add(ex))
                if keep:
                    out.append(ex)
                if counts.tokens >= budget or (max_examples is not None
                                               and counts.examples >= max_examples):
                    return out
    return out


def _count(examples: list[dict]) -> dict:
    counts = ExampleCounts()
    for ex in examples:
        counts.add(ex)
    return counts.as_dict()


def build_pretrain_sets(pcfg: PretrainDataConfig, tokenizer, seed: int, *,
                        skip_bad_lines: bool = False, progress: bool = False,
                        train_documents=None, keep_train: bool = True, num_proc: int = 1
                        ) -> tuple[list[dict], list[dict], dict]:
    """``(train, eval, summary)`` from the configured sources. ``train_documents``, when
    given (a list, or anything with ``append`` and ``extend`` such as
    :class:`icae.data.prepared.TokenDocumentWriter`), receives the token ids of every
    document that fed the training set, in order, so that training can draw fresh spans
    from them each pass (:mod:`icae.training.spans`). ``keep_train=False``: the training
    examples are counted (in the summary) but not returned, so memory does not grow
    with ``token_num``. ``num_proc``: tokenizer processes (the output does not depend
    on it)."""
    if not pcfg.sources:
        raise DataError("data.pretrain.sources: no sources configured")
    skips = SkipLog()
    train_stats = PretrainStats(skips=skips)
    docs = iter_documents(pcfg.sources, skip_bad_lines=skip_bad_lines, skips=skips)
    eval_examples: list[dict] = []
    eval_stats = PretrainStats()
    counts = ExampleCounts()
    if pcfg.eval_sources:
        eval_docs = iter_documents(pcfg.eval_sources, label="data.pretrain.eval_sources",
                                   skip_bad_lines=skip_bad_lines, skips=eval_stats.skips)
        if pcfg.eval_size > 0:
            eval_examples = build_pretrain_examples(
                eval_docs, tokenizer, pcfg, seed + 1, token_budget=10 ** 15,
                max_examples=pcfg.eval_size, stats=eval_stats, progress=False,
                num_proc=num_proc)
        train = build_pretrain_examples(docs, tokenizer, pcfg, seed, stats=train_stats,
                                        progress=progress, doc_ids=train_documents,
                                        num_proc=num_proc, counts=counts, keep=keep_train)
    else:
        # Hold out the first shuffled documents as the eval set.
        train = []
        held_out: list = []
        stream = iter_doc_examples(docs, tokenizer, pcfg, seed, train_stats, doc_ids=held_out,
                                   num_proc=num_proc)
        with closing(stream), _progress(pcfg.token_num, "pretrain", progress) as bar:
            for _, examples in stream:
                if len(eval_examples) < pcfg.eval_size:
                    eval_examples.extend(examples[: pcfg.eval_size - len(eval_examples)])
                    held_out.clear()
                    continue
                if train_documents is not None:
                    train_documents.extend(held_out)
                held_out.clear()
                for ex in examples:
                    bar.update(counts.add(ex))
                    if keep_train:
                        train.append(ex)
                    if counts.tokens >= pcfg.token_num:
                        break
                if counts.tokens >= pcfg.token_num:
                    break
    summary = {
        "train": counts.as_dict(), "eval": _count(eval_examples),
        "documents_read": train_stats.documents_read + eval_stats.documents_read,
        "documents_used": train_stats.documents_used + eval_stats.documents_used,
        "documents_skipped": {"train_sources": train_stats.skips.as_dict(),
                              "eval_sources": eval_stats.skips.as_dict()},
        "lm_fallback_ae": train_stats.lm_fallback_ae + eval_stats.lm_fallback_ae,
        "long_documents_windowed": (train_stats.long_documents_windowed
                                    + eval_stats.long_documents_windowed),
        "tokenized_tokens": train_stats.tokenized + eval_stats.tokenized,
        "token_budget": pcfg.token_num,
        "budget_reached": counts.tokens >= pcfg.token_num,
        "eval_from": "eval_sources" if pcfg.eval_sources else "held-out documents",
    }
    if not counts.examples:
        raise DataError(
            f"data.pretrain: no training examples: read {summary['documents_read']} documents "
            f"and skipped {skips.total} ({dict(skips.counts)}); "
            + ("all usable documents went to the eval set; " if eval_examples else "")
            + f"check data.pretrain.sources and min_len={pcfg.min_len}")
    if pcfg.eval_size > 0 and not eval_examples:
        raise DataError("data.pretrain: no eval examples could be built (eval_size="
                        f"{pcfg.eval_size}); check eval_sources and min_len={pcfg.min_len}")
    if not summary["budget_reached"]:
        log.warning("pretrain: the sources ran out after %d of %d budgeted tokens",
                    summary["train"]["tokens"], pcfg.token_num)
    return train, eval_examples, summary
