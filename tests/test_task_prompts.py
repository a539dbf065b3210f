"""One prompt function per task for training and evaluation, and no untrained marker in an
evaluated prompt (issue 10, items 2 and 9)."""

from __future__ import annotations

import pytest

from icae.config import ModelConfig, load_config
from icae.evaluation.policy import ContextPolicy
from icae.models.base import IGNORE
from icae.models.task_prompts import PromptRule
from icae.models.templates import Marker
from icae.tasks import TASKS, TaskContext
from icae.training.examples import encode_records

build_qa = TASKS["qa"].build_examples
build_repoqa = TASKS["repoqa"].build_examples

CONTEXT = "Alice was beginning to get very tired of sitting by her sister on the bank."
SQUAD = {"id": "q0", "context": CONTEXT, "question": "Who was tired?", "answers": ["Alice"]}
REPOQA = {"id": "r0", "language": "python", "repo": "demo", "needle_name": "function",
          "context": "def function(x):\n    return x + 1\n\n# The quick brown fox.\n",
          "description": "Adds one to x.", "needle_code": "def function(x):\n    return x + 1",
          "position_ratio": 0.5, "context_tokens": 20}


def _model(tok, model_type, min_compress_len):
    from icae.models import build_model
    from icae.testing import tiny_model
    from tests.conftest import make_icae

    if model_type == "icae":
        return make_icae(tok, mem_size=4, rate=2.0, min_compress_len=min_compress_len)
    cfg = ModelConfig(model_type="llm", mem_size=4, mean_compression_rate=2.0, lora_r=4,
                      lora_alpha=8, lora_dropout=0.0)
    return build_model(cfg, tiny_model("llama", vocab_size=len(tok)), tok)


def _prompt_part(enc):
    """Input ids and positions before the first labelled (answer) token."""
    first = next(i for i, y in enumerate(enc.labels) if y != IGNORE)
    return enc.input_ids[:first], enc.position_ids[:first]


@pytest.mark.parametrize("task", ["qa", "repoqa"])
@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("model_type", ["icae", "llm"])
def test_training_prompt_minus_answer_is_the_evaluation_prompt(tiny_tok, task, compressed,
                                                               model_type):
    model = _model(tiny_tok, model_type, 0 if compressed else 10_000)
    cfg = load_config(None, [f"model.model_type={model_type}"])
    dataset, row, build = {"qa": ("squad", SQUAD, build_qa),
                           "repoqa": ("repoqa", REPOQA, build_repoqa)}[task]
    (train,), _ = encode_records(model, cfg, dataset, [row], 4096)
    tctx = TaskContext(cfg, model.prompts, ContextPolicy(model.cfg, model=model),
                       list(model.stop_ids))
    (ex,) = build([dict(row)], tctx)
    ev = model.encode(ex.prompt)
    assert _prompt_part(train) == (ev.input_ids, ev.position_ids)
    assert [c[0] for c in train.contexts] == [c[0] for c in ev.contexts]
    ft = getattr(model, "marker_ids", {}).get("ft")
    assert (ft in ev.input_ids) == (model_type == "icae" and compressed)


def _tokenizer(kind):
    from transformers import AutoTokenizer

    from icae.testing import tiny_tokenizer
    from tests.conftest import shared_path

    if kind in ("qwen3", "mistral"):
        tok = AutoTokenizer.from_pretrained(str(shared_path("assets", "tokenizers", kind)))
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token
        return tok
    return tiny_tokenizer(chat_template=kind == "chatml")


def _trajectory():
    msg = lambda role, content, compress=False: {"role": role, "content": content,
                                                 "compress": compress}
    return {"id": "t", "messages": [
        msg("system", "You are an agent."), msg("user", "Start."), msg("assistant", "ok"),
        msg("user", CONTEXT, True), msg("assistant", "run x"),
        msg("user", "The quick brown fox jumps over the lazy dog.", True),
        msg("assistant", "done."), msg("user", "short"), msg("assistant", "bye")]}


@pytest.mark.parametrize("kind", ["qwen3", "mistral", "chatml", "none"])
@pytest.mark.parametrize("model_type", ["icae", "llm"])
def test_training_sequences_hold_each_evaluated_turn(kind, model_type):
    """Trajectories: whatever the template (Qwen3 re-renders earlier turns), every trained
    turn is preceded by exactly its evaluation prompt (ids and positions) and its target
    is the evaluation reference."""
    build_trajectories = TASKS["trajectories"].build_examples

    tok = _tokenizer(kind)
    model = _model(tok, model_type, 0)
    cfg = load_config(None, [f"model.model_type={model_type}"])
    rec = _trajectory()
    train, stats = encode_records(model, cfg, "trajectories", [rec], 4096)
    assert stats.skipped == 0
    starts = [(enc, i) for enc in train for i in range(1, len(enc.labels))
              if enc.labels[i] != IGNORE and enc.labels[i - 1] == IGNORE]
    tctx = TaskContext(cfg, model.prompts, ContextPolicy(model.cfg, model=model),
                       list(model.stop_ids))
    examples = build_trajectories([rec], tctx)
    assert len(examples) == len(starts) == 3
    # Qwen3's template re-renders earlier turns: one sequence per turn; the others: one
    assert len(train) == (3 if kind == "qwen3" else 1)
    for (enc, start), ex in zip(starts, examples):
        ev = model.encode(ex.prompt)
        assert enc.input_ids[:start] == ev.input_ids
        assert enc.position_ids[:start] == ev.position_ids
        n = len(ex.reference_ids)
        assert enc.input_ids[start:start + n] == ex.reference_ids
        assert all(y != IGNORE for y in enc.labels[start:start + n])


# --- item 9: markers ------------------------------------------------------------------------


def test_marker_fallbacks():
    assert PromptRule().marker("ft") == "ft"  # no restriction
    assert PromptRule(trained_markers=frozenset({"ae", "lm"})).marker("ft") == "lm"
    assert PromptRule(trained_markers=frozenset({"ae"})).marker("ft") is None
    assert PromptRule(trained_markers=frozenset({"lm"})).marker("ae") is None


def test_trained_markers_of_old_and_new_checkpoints(tmp_path):
    from icae.models.checkpoint import trained_markers

    assert trained_markers({"model_type": "icae", "trained_markers": ["ae"]}) == {"ae"}
    assert trained_markers({"model_type": "icae", "stage": "finetune"}) == {"ae", "lm", "ft"}
    assert trained_markers({"model_type": "icae", "stage": "pretrain"}) == {"ae", "lm"}
    assert trained_markers({"model_type": "llm", "stage": "finetune"}) == set()
    (tmp_path / "config.yaml").write_text("data:\n  pretrain:\n    lm_ratio: 0.0\n")
    assert trained_markers({"model_type": "icae", "stage": "pretrain"}, tmp_path) == {"ae"}


@pytest.mark.parametrize("trained, expected", [(None, "ft"), ({"ae", "lm"}, "lm"),
                                               ({"ae"}, None)])
def test_qa_prompt_never_holds_an_untrained_marker(tiny_tok, trained, expected):
    model = _model(tiny_tok, "icae", 0)
    cfg = load_config(None, [])
    tctx = TaskContext(cfg, model.prompts, ContextPolicy(model.cfg, model=model),
                       list(model.stop_ids),
                       trained_markers=None if trained is None else frozenset(trained))
    (ex,) = build_qa([dict(SQUAD)], tctx)
    (rex,) = build_repoqa([dict(REPOQA)], tctx)
    for pieces in (ex.prompt, rex.prompt):
        kinds = [p.kind for p in pieces if isinstance(p, Marker)]
        assert kinds == ([expected] if expected else [])
