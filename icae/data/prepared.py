"""Prepared data sets on disk: Arrow IPC files, memory-mapped on read.

Every set prepared by ``icae prepare-data`` is a folder ``<data.prepared_dir>/<set>/``
holding ``train.arrow``, ``eval.arrow`` (:func:`split_filename`) and ``summary.json``.
An Arrow IPC file (the uncompressed "feather v2" format) is read through a memory map:
opening one reads its footer only, a record is decoded when it is asked for, and the
pages of the file live in the page cache, shared by every process and rank that reads it,
instead of as Python objects in each of them (a token id in a JSON-loaded list costs about
36 bytes per copy; here 2 or 4 bytes, once per machine).

Two kinds of file:

- **records** (:func:`write_records` / :class:`PreparedRecords`): one row per prepared
  record (a SQuAD question, a RepoQA task, a trajectory, a pre-training eval span). The
  columns are the records' top-level keys, typed from their values: strings, integers,
  floats, booleans and lists of integers (token ids) are Arrow columns of that type; any
  other value (nested lists and mappings, mixed types, null) is stored as its JSON text.
  A key a record lacks is a null in its column (no typed column holds a real null), so
  every record reads back equal to what was written, with its keys in column order.
- **token documents** (:func:`write_token_documents` / :class:`TokenDocuments`): the
  pre-training set's training documents, one row per document with its token ids
  (``uint16`` when the vocabulary fits, else ``uint32``), written as they are tokenized;
  training draws fresh spans from them (:mod:`icae.training.spans`).

Files are written atomically (:func:`icae.utils.atomic_file`) in record batches of a
bounded size, so writing never holds more than one batch beyond what the caller holds.
The bytes depend only on the rows (no timestamps or writer settings), so equal data gives
equal files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from icae.data.io import DataError

SPLITS = ("train", "eval")
SUFFIX = ".arrow"
_OLD_SUFFIX = ".jsonl"
RERUN = "rerun `python -m icae prepare-data`"

# Schema metadata: which kind of file, and the encoding of JSON-text columns.
_KIND = b"icae.kind"
_JSON = b"icae.json"
RECORDS = b"records/1"
DOCUMENTS = b"token_documents/1"
# Rows and tokens per record batch: small enough that a batch is cheap to build and the
# row lookup table stays short, large enough that per-batch overhead does not matter.
ROWS_PER_BATCH = 1024
TOKENS_PER_BATCH = 1 << 20


def split_filename(split: str) -> str:
    """The file name of a prepared split (``train.arrow``, ``eval.arrow``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return f"{split}{SUFFIX}"


def split_path(folder: str | os.PathLike, split: str) -> Path:
    return Path(folder) / split_filename(split)


def check_split(path: str | os.PathLike) -> Path:
    """``path`` when it is a prepared file; otherwise an error naming its folder: missing
    (FileNotFoundError) or written in the old JSONL format (:class:`DataError`)."""
    path = Path(path)
    if path.is_file():
        return path
    folder = path.parent
    old = folder / (path.name[: -len(SUFFIX)] + _OLD_SUFFIX) if path.name.endswith(
        SUFFIX) else None
    if old is not None and old.is_file():
        raise DataError(f"{folder}: prepared by an older version ({old.name}, JSONL); this "
                        f"version reads {path.name} (Arrow): {RERUN}")
    raise FileNotFoundError(f"{folder}: prepared data set missing ({path.name} does not "
                            f"exist): {RERUN}")


def _open_ipc(path: Path, kind: bytes):
    import pyarrow as pa

    check_split(path)
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable prepared Arrow file ({exc}): {RERUN}") from None
    meta = reader.schema.metadata or {}
    if meta.get(_KIND) != kind:
        raise DataError(f"{path}: holds {meta.get(_KIND, b'unknown').decode()} data, not "
                        f"{kind.decode()}: {RERUN}")
    return reader


# -- records -----------------------------------------------------------------------------

_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _kind_of(values: list) -> str:
    """The column type of a key from every value it has (present keys only)."""
    types = {type(v) for v in values}
    if types == {str}:
        return "string"
    if types == {bool}:
        return "bool"
    if types == {int} and all(_INT64[0] <= v <= _INT64[1] for v in values):
        return "int64"
    if types == {float}:
        return "float64"
    if types == {list} and all(type(x) is int for v in values for x in v):
        ints = [x for v in values for x in v]
        if all(_INT32[0] <= x <= _INT32[1] for x in ints):
            return "ids32"
        if all(_INT64[0] <= x <= _INT64[1] for x in ints):
            return "ids64"
    return "json"


def records_schema(rows: Sequence[dict]):
    """The Arrow schema of ``rows``: one column per key (in order of first appearance)."""
    import pyarrow as pa

    keys: dict[str, list] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"record {i}: expected a dict, got {type(row).__name__}")
        for k, v in row.items():
            if not isinstance(k, str):
                raise TypeError(f"record {i}: keys must be strings, got {k!r}")
            keys.setdefault(k, []).append(v)
    types = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(),
             "float64": pa.float64(), "ids32": pa.list_(pa.int32()),
             "ids64": pa.list_(pa.int64()), "json": pa.string()}
    fields = []
    for k, values in keys.items():
        kind = _kind_of(values)
        fields.append(pa.field(k, types[kind], nullable=True,
                               metadata={_JSON: b"1"} if kind == "json" else None))
    return pa.schema(fields, metadata={_KIND: RECORDS})


def _is_json(field) -> bool:
    return bool(field.metadata) and field.metadata.get(_JSON) == b"1"


def _batch(rows: Sequence[dict], schema):
    import pyarrow as pa

    missing = object()
    columns = []
    for field in schema:
        values = [row.get(field.name, missing) for row in rows]
        if _is_json(field):
            values = [None if v is missing else json.dumps(v, ensure_ascii=False)
                      for v in values]
        else:
            values = [None if v is missing else v for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.record_batch(columns, schema=schema)


def write_records(path: str | os.PathLike, rows: Sequence[dict]) -> int:
    """Write ``rows`` (dicts of JSON values) as a records file, atomically; returns their
    number. An empty ``rows`` gives a valid file with no columns and no rows."""
    import pyarrow as pa

    from icae.utils import atomic_file

    rows = list(rows)
    schema = records_schema(rows)
    with atomic_file(path, "wb") as fh, pa.ipc.new_file(fh, schema) as writer:
        for i in range(0, len(rows), ROWS_PER_BATCH):
            writer.write_batch(_batch(rows[i:i + ROWS_PER_BATCH], schema))
    return len(rows)


class _Decoder:
    """Turns the rows of one record batch back into dicts (a column at a time for
    iteration, one row for random access)."""

    def __init__(self, batch):
        self.batch = batch
        self.fields = list(batch.schema)
        self.json = [_is_json(f) for f in self.fields]
        self.names = [f.name for f in self.fields]
        self._ids: dict[int, tuple] = {}

    def _ids_column(self, c: int):
        # Token-id lists straight from the mapped buffers (faster than as_py per row).
        if c not in self._ids:
            col = self.batch.column(c)
            self._ids[c] = (col.offsets.to_numpy(zero_copy_only=False),
                            col.values.to_numpy(zero_copy_only=False))
        return self._ids[c]

    def row(self, j: int) -> dict:
        import pyarrow as pa

        out: dict[str, Any] = {}
        for c, name in enumerate(self.names):
            col = self.batch.column(c)
            if col.null_count and not col[j].is_valid:
                continue  # the record lacks this key
            if pa.types.is_list(col.type):
                offsets, values = self._ids_column(c)
                out[name] = values[offsets[j]:offsets[j + 1]].tolist()
            elif self.json[c]:
                out[name] = json.loads(col[j].as_py())
            else:
                out[name] = col[j].as_py()
        return out

    def rows(self) -> list[dict]:
        cols = [self.batch.column(c).to_pylist() for c in range(len(self.names))]
        out = []
        for j in range(self.batch.num_rows):
            row = {}
            for c, name in enumerate(self.names):
                v = cols[c][j]
                if v is None:
                    continue  # the record lacks this key (a JSON null is the text "null")
                row[name] = json.loads(v) if self.json[c] else v
            out.append(row)
        return out


class PreparedRecords(Sequence):
    """A records file, memory-mapped: ``len``, ``records[i]`` (a fresh dict each time) and
    iteration in file order. Pickled by its path (a data-loader worker maps the file
    itself instead of receiving a copy)."""

    def __init__(self, path: str | os.PathLike):
        import numpy as np

        self.path = Path(path)
        reader = _open_ipc(self.path, RECORDS)
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = [b.num_rows for b in self._batches]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._decoders: dict[int, _Decoder] = {}

    def __reduce__(self):
        return (type(self), (str(self.path),))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _decoder(self, b: int) -> _Decoder:
        if b not in self._decoders:
            if len(self._decoders) >= 4:  # a few recent batches; the rest stay mapped only
                self._decoders.pop(next(iter(self._decoders)))
            self._decoders[b] = _Decoder(self._batches[b])
        return self._decoders[b]

    def __getitem__(self, i):
        import numpy as np

        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range ({n} records)")
        b = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._decoder(b).row(int(i - self._starts[b]))

    def __iter__(self) -> Iterator[dict]:
        for batch in self._batches:
            yield from _Decoder(batch).rows()

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self._batches[0].schema] if self._batches else []


def read_records(path: str | os.PathLike) -> PreparedRecords:
    """The records of a prepared file (missing / old format: see :func:`check_split`)."""
    return PreparedRecords(path)


# -- token documents -----------------------------------------------------------------------

def token_dtype(vocab_size: int):
    """The narrowest unsigned type for token ids below ``vocab_size``."""
    import numpy as np

    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


class TokenDocumentWriter:
    """Appends token documents to a file as they come (``append(ids)`` / ``extend``);
    use as a context manager: the file appears (atomically) when the block succeeds.
    ``vocab_size`` fixes the stored type (:func:`token_dtype`); an id that does not fit
    is an error."""

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        import numpy as np

        self.path = Path(path)
        self.dtype = np.dtype(token_dtype(vocab_size))
        self.vocab_size = int(vocab_size)
        self.documents = 0
        self.tokens = 0
        self._pending: list = []
        self._pending_tokens = 0

    def __enter__(self):
        import pyarrow as pa

        from icae.utils import atomic_file

        self._file_cm = atomic_file(self.path, "wb")
        fh = self._file_cm.__enter__()
        value = pa.from_numpy_dtype(self.dtype)
        self.schema = pa.schema([pa.field("ids", pa.list_(value), nullable=False)],
                                metadata={_KIND: DOCUMENTS})
        self._writer = pa.ipc.new_file(fh, self.schema)
        return self

    def append(self, ids) -> None:
        import numpy as np

        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"{self.path}: token id {int(arr.max())} outside the "
                             f"vocabulary of {self.vocab_size}")
        self._pending.append(arr.astype(self.dtype, copy=False))
        self._pending_tokens += arr.size
        self.documents += 1
        self.tokens += int(arr.size)
        if self._pending_tokens >= TOKENS_PER_BATCH or len(self._pending) >= ROWS_PER_BATCH:
            self._flush()

    def extend(self, documents: Iterable) -> None:
        for ids in documents:
            self.append(ids)

    def _flush(self) -> None:
        import numpy as np
        import pyarrow as pa

        if not self._pending:
            return
        lengths = np.fromiter((a.size for a in self._pending), dtype=np.int64,
                              count=len(self._pending))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = (np.concatenate(self._pending) if self._pending_tokens
                  else np.zeros(0, dtype=self.dtype))
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        self._writer.write_batch(pa.record_batch([ids], schema=self.schema))
        self._pending, self._pending_tokens = [], 0

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._flush()
            self._writer.close()
        finally:
            return self._file_cm.__exit__(exc_type, exc, tb)

    def info(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "dtype": str(self.dtype)}


def write_token_documents(path: str | os.PathLike, documents: Iterable,
                          vocab_size: int | None = None) -> dict:
    """Write token documents (sequences of ids); ``vocab_size`` defaults to one above the
    largest id (then ``documents`` is read twice: give a sequence). Returns
    ``{"documents", "tokens", "dtype"}``."""
    if vocab_size is None:
        documents = list(documents)
        vocab_size = 1 + max((int(max(d)) for d in documents if len(d)), default=0)
    with TokenDocumentWriter(path, vocab_size) as w:
        w.extend(documents)
    return w.info()


class TokenDocuments:
    """Read side of :class:`TokenDocumentWriter`, memory-mapped (no copy per process):
    ``len``, ``length(i)``, ``slice(i, start, stop)`` and ``offsets`` (int64,
    ``len + 1`` document boundaries as if the documents were back to back)."""

    def __init__(self, path: str | os.PathLike):
        import numpy as np

        self.path = Path(path)
        reader = _open_ipc(self.path, DOCUMENTS)
        self._offsets, self._values = [], []
        lengths = []
        for b in range(reader.num_record_batches):
            col = reader.get_batch(b).column(0)
            off = col.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
            self._offsets.append(off)
            self._values.append(col.values.to_numpy(zero_copy_only=True))
            lengths.append(np.diff(off))
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        sizes = [len(o) - 1 for o in self._offsets]
        self._first = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def __reduce__(self):
        return (type(self), (str(self.path),))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def slice(self, i: int, start: int, stop: int) -> list[int]:
        """Tokens ``start:stop`` (``0 <= start``) of document ``i``, clipped to its end."""
        import numpy as np

        b = int(np.searchsorted(self._first, i, side="right")) - 1
        off = self._offsets[b]
        j = i - int(self._first[b])
        a, end = int(off[j]), int(off[j + 1])
        return self._values[b][min(a + start, end):min(a + stop, end)].tolist()
