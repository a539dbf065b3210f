"""Prepared data on disk (Arrow, memory-mapped) and training examples encoded when read
(issue 15, item 2)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from icae.data import prepared
from icae.data.io import DataError
from icae.data.prepared import (PreparedRecords, TokenDocuments, read_records,
                                write_records, write_token_documents)

ROWS = [
    {"id": "a", "n": 1, "x": 0.5, "ok": True, "ids": [1, 2, 3], "answers": ["x", "y"],
     "cut": {"messages_truncated": 0, "note": None}, "mixed": 1},
    {"id": "b", "n": 2, "x": 1.5, "ok": False, "ids": [], "answers": [], "mixed": "one",
     "null": None},
    {"id": "c", "n": -3, "x": -2.0, "ok": True, "ids": [70000, 2 ** 40], "answers": ["z"],
     "messages": [{"role": "user", "content": "héllo", "compress": True}], "title": "T"},
]


def test_records_round_trip_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "ROWS_PER_BATCH", 2)  # two record batches
    path = tmp_path / "train.arrow"
    assert write_records(path, ROWS) == 3
    records = read_records(path)
    assert len(records) == 3
    # every record as written: its keys (missing ones stay missing), types and values
    assert [records[i] for i in range(3)] == ROWS == list(records)
    assert [list(records[i]) for i in range(3)] == [
        [k for k in records.columns if k in row] for row in ROWS]
    assert records[-1] == ROWS[-1] and records[0:2] == ROWS[:2]
    with pytest.raises(IndexError, match="record 3 out of range"):
        records[3]
    # columns typed by their values; anything else is JSON text
    import pyarrow as pa

    schema = pa.ipc.open_file(str(path)).schema
    types = {f.name: (str(f.type), prepared._is_json(f)) for f in schema}
    assert types["id"] == ("string", False) and types["n"] == ("int64", False)
    assert types["x"] == ("double", False) and types["ok"] == ("bool", False)
    assert types["ids"] == ("list<item: int64>", False)  # 2**40 does not fit int32
    assert all(types[k][1] for k in ("answers", "cut", "mixed", "null", "messages"))
    # a data-loader worker gets the path and maps the file itself
    again = pickle.loads(pickle.dumps(records))
    assert isinstance(again, PreparedRecords) and list(again) == ROWS
    assert len(pickle.dumps(records)) < 300


def test_records_files_are_deterministic_and_empty_ones_valid(tmp_path):
    write_records(tmp_path / "a.arrow", ROWS)
    write_records(tmp_path / "b.arrow", [dict(r) for r in ROWS])
    assert (tmp_path / "a.arrow").read_bytes() == (tmp_path / "b.arrow").read_bytes()
    assert write_records(tmp_path / "e.arrow", []) == 0
    assert len(read_records(tmp_path / "e.arrow")) == 0 and list(read_records(
        tmp_path / "e.arrow")) == []
    with pytest.raises(TypeError, match="record 0: expected a dict"):
        write_records(tmp_path / "x.arrow", [["not", "a", "dict"]])
    assert not (tmp_path / "x.arrow").exists()


def test_token_documents_round_trip_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "TOKENS_PER_BATCH", 100)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 500, size=int(n)).tolist() for n in (90, 0, 30, 250, 5, 64)]
    info = write_token_documents(tmp_path / "d.arrow", docs, vocab_size=500)
    assert info == {"documents": 6, "tokens": 439, "dtype": "uint16"}
    td = TokenDocuments(tmp_path / "d.arrow")
    assert len(td) == 6 and list(np.diff(td.offsets)) == [len(d) for d in docs]
    for i, d in enumerate(docs):
        assert td.slice(i, 0, len(d)) == d and td.slice(i, 3, 10) == d[3:10]
        tail = max(0, len(d) - 2)
        assert td.slice(i, tail, len(d) + 50) == d[tail:]  # never into the next one
    assert pickle.loads(pickle.dumps(td)).slice(3, 0, 5) == docs[3][:5]
    with pytest.raises(ValueError, match="token id 500 outside the vocabulary of 500"):
        write_token_documents(tmp_path / "bad.arrow", [[1, 500]], vocab_size=500)
    assert not (tmp_path / "bad.arrow").exists()
    # records are not documents, and the other way round
    write_records(tmp_path / "r.arrow", ROWS)
    with pytest.raises(DataError, match="holds records/1 data, not token_documents/1"):
        TokenDocuments(tmp_path / "r.arrow")
    with pytest.raises(DataError, match="holds token_documents/1 data, not records/1"):
        read_records(tmp_path / "d.arrow")


# -- lazy examples == eager examples -------------------------------------------------------

@pytest.fixture(scope="module")
def prepared_samples(tmp_path_factory):
    """Every set prepared from the shipped samples with the tiny tokenizer, plus a SQuAD
    record without an answer (skipped in training)."""
    from icae.data.prepare import run
    from icae.data.prepared import split_path
    from tests.test_data_prepare import sample_cfg
    from icae.testing import tiny_tokenizer

    root = tmp_path_factory.mktemp("lazy")
    model_dir = root / "model"
    tiny_tokenizer().save_pretrained(model_dir)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg = sample_cfg(model_dir, root / "prepared", squad={
        "train_file": str(prepared_path("squad/train-v1.1-sample.json")),
        "eval_file": str(prepared_path("squad/dev-v1.1-sample.json")), "train_size": 40})
    run(cfg)
    train = split_path(root / "prepared" / "squad", "train")
    rows = list(read_records(train))
    rows.insert(3, {**rows[0], "id": "unanswered", "answers": []})
    write_records(train, rows)
    return cfg


def prepared_path(name):
    from tests.test_data_prepare import SAMPLES

    return SAMPLES / name


def _check_lazy_equals_eager(model, cfg, dataset, split, max_length):
    from icae.training.examples import (LazyExamples, encode_records, load_records,
                                        markers_in)

    records = load_records(cfg, dataset, split)
    eager, stats = encode_records(model, cfg, dataset, list(records), max_length)
    lazy = LazyExamples(model, cfg, dataset, records, max_length)
    assert len(lazy) == len(eager) == stats.examples
    assert lazy.stats == stats
    assert lazy.markers == markers_in(model, eager)
    order = np.random.default_rng(0).permutation(len(eager))  # as a shuffling sampler reads
    assert [lazy[int(k)] for k in order] == [eager[int(k)] for k in order]
    assert [lazy[k] for k in range(len(lazy))] == eager
    return records, stats


@pytest.mark.parametrize("dataset, split", [("squad", "train"), ("repoqa", "train"),
                                            ("trajectories", "train"), ("pretrain", "eval")])
@pytest.mark.parametrize("max_length", [48, 4096])
def test_lazy_examples_are_the_eager_ones(prepared_samples, tiny_tok, dataset, split,
                                          max_length):
    """The same examples in the same order, and the same build stats, whether records
    yield none (skipped), one, or a cut one."""
    from tests.conftest import make_icae

    model = make_icae(tiny_tok)
    records, stats = _check_lazy_equals_eager(model, prepared_samples, dataset, split,
                                              max_length)
    if dataset == "squad":  # the record without an answer, and long contexts at 48
        assert stats.reasons.get("no gold answer") == 1
        assert stats.examples < len(records)
    if max_length == 48 and dataset in ("squad", "pretrain"):
        assert stats.truncated + stats.skipped - stats.reasons.get("no gold answer", 0) > 0


def test_lazy_examples_with_several_per_record(prepared_samples):
    """Qwen3's template re-renders earlier turns: a trajectory gives one example per
    target turn, and the lazy index maps each to its record."""
    from transformers import AutoTokenizer

    from tests.conftest import make_icae, shared_path

    tok = AutoTokenizer.from_pretrained(str(shared_path("assets", "tokenizers", "qwen3")))
    model = make_icae(tok)
    for max_length in (4096, 700):
        records, stats = _check_lazy_equals_eager(model, prepared_samples, "trajectories",
                                                  "train", max_length)
        assert stats.examples > len(records)
