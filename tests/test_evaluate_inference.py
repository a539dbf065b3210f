"""Evaluation's inference settings change timings, never predictions: memory computed once
per SQuAD paragraph, incremental trajectory turns, static vs dynamic decoding."""

from __future__ import annotations

import pytest

from icae.evaluation.run import evaluate
from tests.test_evaluate import _write_split, env, make_cfg, read_outputs  # noqa: F401

PARAGRAPHS = ["The quick brown fox jumps over the lazy dog. A memory slot holds a summary.",
              "Alice was beginning to get very tired of sitting by her sister on the bank."]
QUESTIONS = ["Who was tired?", "What jumps?", "Where was she sitting?"]


def _run(env, tmp_path, name, *overrides):
    cfg = make_cfg(env, tmp_path, f"run_name={name}", *overrides)
    evaluate(cfg)
    task = next(o.split("=", 1)[1] for o in overrides if o.startswith("evaluation.task="))
    return read_outputs(tmp_path / name / "eval" / "default" / task)


def test_memory_cache_encodes_each_paragraph_once(env, tmp_path):
    data = tmp_path / "prepared"
    _write_split(data / "squad", [
        {"id": f"q{i}{j}", "context": p, "question": q, "answers": ["x"]}
        for i, p in enumerate(PARAGRAPHS) for j, q in enumerate(QUESTIONS)])
    common = ("evaluation.task=qa", f"data.prepared_dir={data}", "evaluation.max_new_tokens=6")
    p_off, _, s_off = _run(env, tmp_path, "cache-off", *common, "evaluation.memory_cache=false")
    p_on, rows, s_on = _run(env, tmp_path, "cache-on", *common)
    assert [p["prediction"] for p in p_on] == [p["prediction"] for p in p_off]
    assert s_on["metrics"]["memory_cache_misses"] == len(PARAGRAPHS)
    assert s_on["metrics"]["memory_cache_hits"] == len(PARAGRAPHS) * (len(QUESTIONS) - 1)
    assert "memory_cache_hits" not in s_off["metrics"]
    assert s_on["generation"]["memory_cache"] is True
    assert {"prefill_time_s", "decode_time_s"} <= {r["metric"] for r in rows}


@pytest.mark.parametrize("model_type", ["icae", "llm"])
def test_incremental_turns_give_the_same_predictions(env, tmp_path, model_type):
    common = ("evaluation.task=trajectories", f"model.model_type={model_type}",
              "evaluation.max_turns_per_trajectory=3")
    full, _, s_full = _run(env, tmp_path, "full", *common, "evaluation.incremental_turns=false",
                           "evaluation.decoding=dynamic")
    inc, _, s_inc = _run(env, tmp_path, "inc", *common, "evaluation.decoding=static")
    assert [p["prediction"] for p in inc] == [p["prediction"] for p in full]
    # Same tokens, same scores; the teacher-forced loss only to float precision: on CUDA
    # (H200, 2026-12-02) extending a KV cache and recomputing the prefix differ in the 7th
    # digit (6.3748379 vs 6.3748374), as different kernel shapes do.
    assert [p["metrics"] for p in inc] == [pytest.approx(p["metrics"], rel=1e-5) for p in full]
    assert s_inc["generation"]["incremental_turns"] is True
    assert s_inc["metrics"]["kv_cache_peak_bytes"] > 0
    for p in inc:
        t = p["timings"]
        assert {"compress_s", "prefill_s", "decode_s", "prefill_tokens", "reused_tokens",
                "cache_tokens", "kv_cache_bytes"} <= set(t)
        assert t["prefill_tokens"] + t["reused_tokens"] == p["prompt_tokens"]
        assert t["batch_size"] == 1
        if p["turn"] > 1:
            assert t["reused_tokens"] > 0  # the conversation so far came from the cache
        if model_type == "llm":
            assert t["compress_s"] == 0.0


def test_bad_decoding_value_names_the_key(env, tmp_path):
    with pytest.raises(ValueError, match="evaluation.decoding"):
        make_cfg(env, tmp_path, "evaluation.decoding=fast")
