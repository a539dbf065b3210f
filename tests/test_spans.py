"""Fresh pre-training spans every pass, the objective schedule, and the AE/LM diagnostic."""

import logging

import numpy as np
import pytest

from icae.config import PretrainDataConfig
from icae.data.prepared import TokenDocuments, write_token_documents
from icae.training.spans import PretrainSpans, lm_share
from icae.training.trainer import SeparationMonitor


@pytest.fixture
def docs(tmp_path):
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 70000, size=int(n)).tolist() for n in (300, 80, 500, 10, 256)]
    info = write_token_documents(tmp_path / "train.arrow", documents)
    assert info == {"documents": 5, "tokens": 1146, "dtype": "uint32"}
    return documents, TokenDocuments(tmp_path / "train.arrow")


def _spans(td, n, **kw):
    pcfg = PretrainDataConfig(**{"min_len": 40, "len_jitter": 0.25, "lm_ratio": 0.5, **kw})
    return PretrainSpans(td, pcfg, seed=3, num_examples=n,
                         encode=lambda task, ctx, cont, prompt: (task, ctx, cont))


def test_token_documents_round_trip(docs):
    documents, td = docs
    assert len(td) == 5 and [td.length(i) for i in range(5)] == [len(d) for d in documents]
    assert td.slice(2, 10, 20) == documents[2][10:20]


def test_spans_are_drawn_afresh_each_pass_and_are_a_function_of_the_index(docs):
    documents, td = docs
    ds = _spans(td, 40)
    usable = len(ds.usable)
    assert usable == 4  # the 10-token document cannot hold a span of >= 30 tokens
    items = [ds[i] for i in range(len(ds))]
    # the same index gives the same example in a new dataset object (exact resume)
    assert [_spans(td, 40)[i] for i in range(len(ds))] == items
    # every pass visits each usable document once, with new spans
    for p in range(10):
        block = items[p * usable:(p + 1) * usable]
        for task, ctx, cont in block:
            assert 30 <= len(ctx) <= 50
            src = next(d for d in documents if any(d[i:i + len(ctx)] == ctx
                                                    for i in range(len(d) - len(ctx) + 1)))
            if task == "lm":
                j = next(i for i in range(len(src)) if src[i:i + len(ctx)] == ctx)
                assert src[j + len(ctx):j + len(ctx) + len(cont)] == cont
    contexts = [tuple(ctx) for _, ctx, _ in items]
    assert len(set(contexts)) > 0.9 * len(contexts)  # passes do not replay spans
    with pytest.raises(IndexError):
        ds[40]


def test_objective_schedule(docs):
    _, td = docs
    pcfg = PretrainDataConfig(lm_ratio=0.5, ae_only_examples=10, lm_ratio_ramp_examples=10)
    assert [lm_share(i, pcfg) for i in (0, 9, 10, 15, 20, 99)] == [0, 0, 0, 0.25, 0.5, 0.5]
    ds = _spans(td, 400, ae_only_examples=100)
    tasks = [ds[i][0] for i in range(400)]
    assert set(tasks[:100]) == {"ae"}
    assert 0.3 < tasks[100:].count("lm") / 300 < 0.6


def test_separation_monitor_warns_once_when_ae_tracks_lm(caplog):
    mon = SeparationMonitor(after_examples=100)
    with caplog.at_level(logging.WARNING):
        for seen in (50, 100, 150):
            logs = {"ae_loss": 3.2, "lm_loss": 3.3, "examples_seen": seen}
            mon.update(logs)
    assert logs["ae_lm_separated"] == 0
    assert sum("ignoring the memory" in r.message for r in caplog.records) == 1
    ok = SeparationMonitor(after_examples=10)
    logs = {"ae_loss": 0.9, "lm_loss": 3.3, "examples_seen": 20}
    ok.update(logs)
    assert logs["ae_lm_separated"] == 1
    # AE-only warm-up: a fall from the untrained memory's loss (7.0 -> 3.0, the plateau
    # of a frozen decoder measured on 2026-12-02) is no verdict; the first LM loss gives one
    warm = SeparationMonitor(after_examples=10)
    for loss, seen in ((7.0, 0), (3.0, 20)):
        logs = {"ae_loss": loss, "examples_seen": seen}
        warm.update(logs)
        assert "ae_lm_separated" not in logs
    logs = {"ae_loss": 3.0, "lm_loss": 3.4, "examples_seen": 30}
    warm.update(logs)
    assert logs["ae_lm_separated"] == 0


def test_objectives_and_representatives_follow_the_lm_share(tmp_path):
    """The markers a spans run trains come from its possible objectives: AE only while
    every index is in the AE-only warm-up, AE and LM once the LM share is positive."""
    from icae.config import PretrainDataConfig
    from icae.data.prepared import TokenDocuments, write_token_documents
    from icae.training.spans import PretrainSpans

    write_token_documents(tmp_path / "docs", [list(range(1, 60)), list(range(100, 140))])
    docs = TokenDocuments(tmp_path / "docs")
    enc = lambda task, ctx, cont, prompt: (task, tuple(ctx), tuple(cont))  # noqa: E731
    pcfg = PretrainDataConfig(min_len=10, len_jitter=0.0, lm_ratio=0.5, ae_only_examples=8)
    assert PretrainSpans(docs, pcfg, 0, 8, enc).objectives() == ["ae"]
    spans = PretrainSpans(docs, pcfg, 0, 9, enc)
    assert spans.objectives() == ["ae", "lm"]
    (ae, ctx, _), (lm, lctx, cont) = spans.representatives()
    assert (ae, lm) == ("ae", "lm") and ctx == lctx == tuple(range(1, 11))
    assert cont == tuple(range(11, 21))
    no_lm = PretrainDataConfig(min_len=10, len_jitter=0.0, lm_ratio=0.0)
    assert PretrainSpans(docs, no_lm, 0, 100, enc).objectives() == ["ae"]


def test_example_length_is_that_of_the_drawn_example(docs):
    _, td = docs
    ds = _spans(td, 30, lm_target_len=12)
    for i in range(30):
        task, ctx, cont = ds[i]
        assert ds.example_length(i) == ((len(ctx) if task == "ae" else len(cont)), len(ctx))


def test_length_grouped_order_sorts_inside_windows_only():
    from icae.training.spans import LengthGroupedOrder

    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 100, size=50).tolist()
    order = list(LengthGroupedOrder(lambda i: lengths[i], 50, window=16, batch=4, seed=7))
    assert sorted(order) == list(range(50))  # every index once
    for start in range(0, 50, 16):
        window = order[start:start + 16]
        assert sorted(window) == list(range(start, min(start + 16, 50)))  # no crossing
        batches = [window[j:j + 4] for j in range(0, len(window), 4)]
        # each micro-batch is a run of the window's sorted lengths
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b))
                       for b in batches)
        for (lo1, hi1), (lo2, _) in zip(spans, spans[1:]):
            assert hi1 <= lo2
    # a pure function of its arguments (an exact resume); another seed shuffles the batches
    assert list(LengthGroupedOrder(lambda i: lengths[i], 50, 16, 4, 7)) == order
    assert list(LengthGroupedOrder(lambda i: lengths[i], 50, 16, 4, 8)) != order
    # padding to the longest of each micro-batch falls
    def padded(o):
        return sum(max(lengths[i] for i in o[j:j + 4]) * len(o[j:j + 4])
                   for j in range(0, len(o), 4))
    assert padded(order) < padded(list(range(50)))


def test_length_grouped_order_rejects_a_zero_window():
    from icae.training.spans import LengthGroupedOrder

    with pytest.raises(ValueError, match="window"):
        LengthGroupedOrder(len, 10, window=0, batch=2, seed=0)


def test_recall_examples_quote_the_context_and_continue_it(docs):
    _, td = docs
    ds = _spans(td, 400, recall_ratio=0.4, recall_prompt_len=8, recall_target_len=5,
                ae_only_examples=100)
    spans = PretrainSpans(td, ds.pcfg, seed=3, num_examples=400,
                          encode=lambda task, ctx, cont, prompt: (task, ctx, cont, prompt))
    items = [spans[i] for i in range(400)]
    assert {task for task, *_ in items[:100]} == {"ae"}  # the warm-up is AE only
    tasks = [task for task, *_ in items[100:]]
    assert 0.25 < tasks.count("recall") / 300 < 0.55 and 0.3 < tasks.count("lm") / 300 < 0.7
    for i, (task, ctx, cont, prompt) in enumerate(items):
        if task != "recall":
            assert prompt == []
            continue
        assert 4 <= len(prompt) <= 8 and len(cont) == 5
        j = next(k for k in range(len(ctx)) if ctx[k:k + len(prompt)] == prompt)
        assert ctx[j + len(prompt):j + len(prompt) + 5] == cont
        assert spans.example_length(i) == (len(prompt) + 5, len(ctx))
    # AE and LM examples are drawn as in a run without recall (one draw picks the
    # objective): the LM examples are the same, and recall takes only AE examples' places
    plain = _spans(td, 400, ae_only_examples=100)
    for (task, ctx, cont, _), (ptask, pctx, pcont) in zip(items, (plain[i] for i in range(400))):
        if ptask == "lm":
            assert (task, ctx, cont) == (ptask, pctx, pcont)
        elif task == "ae":
            assert ctx == pctx
    assert spans.objectives() == ["ae", "lm", "recall"]
    assert [r[0] for r in spans.representatives()] == ["ae", "lm", "recall"]


def test_recall_needs_room_for_its_prompt_and_target(docs):
    _, td = docs
    ds = _spans(td, 200, lm_ratio=0.0, recall_ratio=1.0, recall_prompt_len=40,
                recall_target_len=20)  # spans of 30..50 tokens: most cannot hold 20..40 + 20
    tasks = [ds[i][0] for i in range(200)]
    assert set(tasks) == {"ae", "recall"} and tasks.count("ae") > 50
    # spans of <= 50 tokens: prompts of 30..60 tokens + 16 fit when short, 40..80 never
    shortest_fits = _spans(td, 400, lm_ratio=0.0, recall_ratio=1.0, recall_prompt_len=60)
    assert shortest_fits.objectives() == ["ae", "recall"]
    assert "recall" in {shortest_fits[i][0] for i in range(400)}
    too_long = _spans(td, 400, lm_ratio=0.0, recall_ratio=1.0, recall_prompt_len=80)
    assert too_long.objectives() == ["ae"]
    assert {too_long[i][0] for i in range(400)} == {"ae"}


def test_lm_and_recall_shares_together_at_most_one():
    from icae.config import load_config

    with pytest.raises(ValueError, match="data.pretrain.recall_ratio"):
        load_config(None, ["data.pretrain.lm_ratio=0.6", "data.pretrain.recall_ratio=0.5"])
