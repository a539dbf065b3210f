import dataclasses
import json
from pathlib import Path

import pytest

from icae.config import PretrainDataConfig, TextSource
from icae.data.corpus import (build_pretrain_examples, build_pretrain_sets, iter_source,
                              shuffle_buffered)
from icae.data.io import DataError, SkipLog
from icae.data.tokens import encode
from tests.conftest import shared_path

FIX = Path(__file__).resolve().parent / "fixtures" / "data" / "pretrain"


def pcfg(**kw) -> PretrainDataConfig:
    base = dict(sources=[TextSource(path=str(FIX / "docs.jsonl"))], min_len=64, lm_ratio=0.5,
                token_num=10 ** 9, eval_size=0, shuffle_buffer=4)
    base.update(kw)
    return PretrainDataConfig(**base)


def _is_contiguous(part, whole):
    n = len(part)
    return any(whole[i:i + n] == part for i in range(len(whole) - n + 1))


def test_jsonl_txt_folder_and_text_field():
    docs = list(iter_source(TextSource(path=str(FIX / "docs.jsonl"))))
    assert [d.id for d in docs] == [f"doc-{i}" for i in range(8)]
    assert docs[0].source == "fixture:prose" and docs[0].where.endswith("docs.jsonl:1")
    folder = list(iter_source(TextSource(path=str(FIX / "folder"))))
    # recursive, sorted by path, .md ignored
    assert [Path(d.where.split(":")[0]).name for d in folder] == [
        "three.jsonl", "two.txt", "one.txt"]
    body = list(iter_source(TextSource(path=str(FIX / "body_field.jsonl"), text_field="body")))
    assert len(body) == 3 and body[0].text == docs[0].text


def test_missing_text_field_is_an_error_or_a_counted_skip():
    src = TextSource(path=str(FIX / "body_field.jsonl"))  # text_field "text" is absent
    with pytest.raises(DataError, match=r"body_field\.jsonl:1: missing text field 'text'"):
        list(iter_source(src))
    skips = SkipLog()
    assert list(iter_source(src, skip_bad_lines=True, skips=skips)) == []
    assert skips.counts["missing_field"] == 3


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_source(TextSource(path=str(tmp_path / "nowhere.jsonl")), label="src"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_source(TextSource(path=str(tmp_path / "x.csv"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        list(iter_source(TextSource(path=str(tmp_path / "empty"))))


def test_examples_follow_icae(tiny_tok):
    cfg = pcfg()
    docs = {d.id: encode(tiny_tok, d.text) for d in iter_source(cfg.sources[0])}
    stats_examples = build_pretrain_examples(iter_source(cfg.sources[0]), tiny_tok, cfg, seed=1)
    assert stats_examples
    tasks = {e["task"] for e in stats_examples}
    assert tasks == {"ae", "lm"}
    for ex in stats_examples:
        assert set(ex) == {"id", "task", "context_ids", "continuation_ids", "source"}
        ids = docs[ex["id"].split("#")[0]]
        assert 57 <= len(ex["context_ids"]) <= 71  # min_len 64 +- 10 %
        if ex["task"] == "ae":
            assert ex["continuation_ids"] == []
            assert _is_contiguous(ex["context_ids"], ids)
        else:  # the LM target is the span right after the context
            assert len(ex["continuation_ids"]) == len(ex["context_ids"])
            assert _is_contiguous(ex["context_ids"] + ex["continuation_ids"], ids)


def test_lm_ratio_extremes_and_target_len(tiny_tok):
    docs = list(iter_source(pcfg().sources[0]))
    ae = build_pretrain_examples(docs, tiny_tok, pcfg(lm_ratio=0.0), 0)
    assert {e["task"] for e in ae} == {"ae"}
    lm = build_pretrain_examples(docs, tiny_tok, pcfg(lm_ratio=1.0, lm_target_len=16), 0)
    assert {e["task"] for e in lm} == {"lm"}
    assert all(len(e["continuation_ids"]) == 16 for e in lm)


def test_token_budget_and_multiple_examples(tiny_tok):
    docs = list(iter_source(pcfg().sources[0]))
    many = build_pretrain_examples(docs, tiny_tok, pcfg(max_examples_per_doc=50, lm_ratio=0), 0)
    one = build_pretrain_examples(docs, tiny_tok, pcfg(lm_ratio=0), 0)
    assert len(many) > 3 * len(one)
    # non-overlapping, consecutive spans within one document
    by_doc = [e for e in many if e["id"].startswith("doc-4#")]
    ids = encode(tiny_tok, docs[4].text)
    assert sum(len(e["context_ids"]) for e in by_doc) <= len(ids)
    budget = build_pretrain_examples(docs, tiny_tok, pcfg(max_examples_per_doc=50), 0,
                                     token_budget=500)
    tokens = sum(len(e["context_ids"]) + len(e["continuation_ids"]) for e in budget)
    assert 500 <= tokens < 500 + 2 * 71


def test_deterministic_for_a_seed(tiny_tok):
    docs = list(iter_source(pcfg().sources[0]))
    a = build_pretrain_examples(docs, tiny_tok, pcfg(), 3)
    b = build_pretrain_examples(list(iter_source(pcfg().sources[0])), tiny_tok, pcfg(), 3)
    c = build_pretrain_examples(docs, tiny_tok, pcfg(), 4)
    assert a == b
    assert a != c


def test_short_documents_counted_or_error(tiny_tok):
    cfg = pcfg(min_len=200)
    docs = list(iter_source(cfg.sources[0]))
    from icae.data.corpus import PretrainStats

    stats = PretrainStats()
    build_pretrain_examples(docs, tiny_tok, cfg, 0, stats=stats)
    assert stats.skips.counts["too_short"] == 2  # doc-1 and doc-5 have 1-3 sentences
    with pytest.raises(DataError, match=r"docs\.jsonl:2: document 'doc-1' has \d+ tokens.*"
                                         r"skip_short=true"):
        build_pretrain_examples(docs, tiny_tok, dataclasses.replace(cfg, skip_short=False), 0)


def test_sets_hold_out_eval_documents(tiny_tok):
    cfg = pcfg(eval_size=2, max_examples_per_doc=3)
    train, ev, summary = build_pretrain_sets(cfg, tiny_tok, 0)
    assert len(ev) == 2
    assert not {e["id"].split("#")[0] for e in ev} & {e["id"].split("#")[0] for e in train}
    assert summary["documents_read"] == 8
    assert summary["documents_skipped"]["train_sources"]["by_reason"] == {"too_short": 1}
    assert summary["train"]["examples"] == len(train)
    assert summary["budget_reached"] is False


def test_sets_with_eval_sources(tiny_tok):
    cfg = pcfg(eval_sources=[TextSource(path=str(FIX / "folder"))], eval_size=2)
    train, ev, summary = build_pretrain_sets(cfg, tiny_tok, 0)
    assert len(ev) == 2 and summary["eval_from"] == "eval_sources"
    assert all(not e["id"].startswith("doc-") for e in ev)


def test_never_a_silent_empty_dataset(tiny_tok):
    with pytest.raises(DataError, match="no training examples"):
        build_pretrain_sets(pcfg(min_len=100000), tiny_tok, 0)
    with pytest.raises(DataError, match="no sources"):
        build_pretrain_sets(pcfg(sources=[]), tiny_tok, 0)


def test_shuffle_buffer_is_a_permutation():
    import random

    out = list(shuffle_buffered(range(100), 10, random.Random(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert list(shuffle_buffered(range(5), 0, random.Random(0))) == list(range(5))


@pytest.fixture
def hf_offline(monkeypatch):
    """Hub calls fail at once (no retries), with or without network."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def test_unknown_hf_dataset_is_a_clear_error(hf_offline):
    src = TextSource(hf_dataset="no-such-org/no-such-dataset-xyz")
    with pytest.raises(DataError, match=r"data\.pretrain\.sources\[0\]: cannot load Hugging Face "
                                         r"dataset 'no-such-org/no-such-dataset-xyz'.*local path"):
        list(iter_source(src, label="data.pretrain.sources[0]"))


def test_real_eval_corpus(tiny_tok):
    path = shared_path("data", "pretrain", "eval.jsonl.gz")
    cfg = PretrainDataConfig(sources=[TextSource(path=str(path))], min_len=128, token_num=20000,
                             eval_size=4)
    train, ev, summary = build_pretrain_sets(cfg, tiny_tok, 0)
    assert summary["budget_reached"] and summary["train"]["tokens"] >= 20000
    assert len(ev) == 4
    assert all(e["source"] for e in train)
    json.dumps(train[:3])  # plain JSON types


def test_long_document_is_windowed_before_tokenizing(tiny_tok):
    # A 54 MB document used to be tokenized whole (10.8 GB of RAM): now only a window.
    seen = []

    class Recording:
        def __call__(self, text, **kw):
            seen.append(len(text))
            return tiny_tok(text, **kw)

    long_doc = "the quick brown fox jumps over the lazy dog " * 60_000  # 2.6 MB
    pcfg = PretrainDataConfig(min_len=32, lm_ratio=0.5, token_num=10 ** 9, shuffle_buffer=0)
    from icae.data.corpus import PretrainStats

    stats = PretrainStats()
    out = build_pretrain_examples([long_doc, "short text " * 20], Recording(), pcfg, seed=1,
                                  stats=stats)
    assert max(seen) <= 200_000
    assert stats.long_documents_windowed == 1
    assert len(out[0]["context_ids"]) >= 28
    again = build_pretrain_examples([long_doc], tiny_tok, pcfg, seed=1)
    assert again[0] == out[0]  # deterministic for a seed


@pytest.mark.parametrize("name, content, needle", [
    ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
    ("blank.txt", b"  \n", "blank.txt: the file is empty"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "latin1.jsonl:2: not UTF-8"),
    ("cut.jsonl.gz", None, r"cut.jsonl.gz:\d+: truncated or corrupt compressed file"),
])
def test_unreadable_sources_are_named(tmp_path, content, name, needle):
    import gzip

    path = tmp_path / name
    if content is None:
        full = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(2000)))
        content = full[: len(full) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        list(iter_source(TextSource(path=str(path))))
