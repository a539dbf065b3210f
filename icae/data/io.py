"""Reading and writing data files: JSON / JSONL (optionally gzip- or xz-compressed), with
errors that name the file and line, counted skips, and atomic JSONL output."""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import random
import zlib
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

from icae.utils import atomic_file, current_umask

log = logging.getLogger(__name__)

T = TypeVar("T")


class DataError(ValueError):
    """Bad input data. The message starts with ``file:line`` (or the file and a JSON path)."""


def open_text(path: str | os.PathLike):
    """Open a text file for reading; ``.gz`` and ``.xz`` are decompressed on the fly."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


# What a truncated or corrupt compressed file raises while it is read (none names the file).
_STREAM_ERRORS = (EOFError, gzip.BadGzipFile, lzma.LZMAError, zlib.error)


def _read_error(path, exc: Exception, lineno: int | None = None) -> DataError:
    where = f"{path}:{lineno}" if lineno else f"{path}"
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                         f"offset {exc.start}): convert the file to UTF-8")
    return DataError(f"{where}: truncated or corrupt compressed file "
                     f"({type(exc).__name__}: {exc}); download or rebuild it")


def read_text(path: str | os.PathLike) -> str:
    """A whole text file (``.gz`` / ``.xz`` decompressed); decoding and decompression
    errors name the file."""
    try:
        with open_text(path) as fh:
            return fh.read()
    except (UnicodeDecodeError, *_STREAM_ERRORS) as exc:
        if isinstance(exc, UnicodeDecodeError):
            raw = Path(path).read_bytes() if Path(path).suffix not in (".gz", ".xz") else b""
            line = raw[:exc.start].count(b"\n") + 1 if raw else None
            raise _read_error(path, exc, line) from None
        raise _read_error(path, exc) from None


def _open_binary(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON document; a syntax error names the file, line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


@dataclass
class SkipLog:
    """Counts records skipped for a reason (``data.skip_bad_lines`` or a filter), keeping a
    few examples of where they were, for summaries and log messages."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    def merge(self, other: "SkipLog") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.examples.get(reason, [])[: max(0, self.max_examples - len(ex))])


def bad_record(message: str, where: str, skip_bad_lines: bool, skips: SkipLog | None,
               reason: str) -> None:
    """Raise ``DataError('where: message')``, or count a skip when bad lines may be skipped."""
    if not skip_bad_lines:
        raise DataError(f"{where}: {message} (set data.skip_bad_lines=true to skip such "
                        "records and count them)")
    log.warning("skipping %s: %s", where, message)
    if skips is not None:
        skips.add(reason, f"{where}: {message}")


def iter_jsonl(path: str | os.PathLike, *, skip_bad_lines: bool = False,
               skips: SkipLog | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line. A line that is not a JSON object
    raises :class:`DataError` naming ``file:line`` (or is counted in ``skips``)."""
    lineno = 0
    # Bytes, decoded line by line, so that a decoding error names its line.
    with _open_binary(path) as fh:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _STREAM_ERRORS as exc:
                raise _read_error(path, exc, lineno + 1) from None
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _read_error(path, exc, lineno) from None
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad_record(f"malformed JSON ({exc.msg}, column {exc.colno})", where,
                           skip_bad_lines, skips, "malformed_json")
                continue
            if not isinstance(row, dict):
                bad_record(f"expected a JSON object, got {type(row).__name__}", where,
                           skip_bad_lines, skips, "not_an_object")
                continue
            yield lineno, row


def read_jsonl(path: str | os.PathLike, *, skip_bad_lines: bool = False,
               skips: SkipLog | None = None) -> list[dict]:
    """All records of a JSONL(.gz) file; malformed lines raise ``DataError('file:line: ...')``
    unless ``skip_bad_lines`` (then they are counted in ``skips``)."""
    return [row for _, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, skips=skips)]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line, atomically (:func:`icae.utils.atomic_file`); returns
    the number of rows. ``.gz`` paths are compressed (deterministically: no timestamp)."""
    n = 0
    with atomic_file(path, "wb") as raw:
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
               if Path(path).suffix == ".gz" else nullcontext(raw))
        with out as fh:
            for row in rows:
                fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                n += 1
    return n


def relax_permissions(root: str | os.PathLike) -> None:
    """Give a folder built through temporary files (0700 / 0600) the usual permissions
    (0777 / 0666 minus the umask), as if it had been created directly."""
    umask = current_umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = 0o777 if path.is_dir() else 0o666
        os.chmod(path, mode & ~umask)



def seeded_subset(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` of ``items`` drawn with ``seed``, kept in their order (all of them when ``n`` is
    None or not smaller than their number)."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
