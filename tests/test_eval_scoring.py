"""Evaluation scoring that a paper prints: RepoQA's budget and official pass@0.8 (issue 10,
items 4 and 5). Pure functions and prompt building only; no model runs."""

from __future__ import annotations

import pytest

from icae.config import load_config
from icae.evaluation import metrics as M
from icae.tasks import TASKS, Example
from tests.conftest import REPO, shared_path


def max_new_tokens_for(e, task):
    return TASKS[task].max_new_tokens(e)


def score(task, ex, prediction, pred_ids):
    return TASKS[task].score(ex, prediction, pred_ids)


def _tokenizer(kind):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_path("assets", "tokenizers", kind)))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    return tok


# --- item 4: budgets ---------------------------------------------------------------------


def test_repoqa_defaults_to_the_official_budget_and_budgets_are_per_task():
    cfg = load_config(None, ["evaluation.max_new_tokens=24"])
    assert max_new_tokens_for(cfg.evaluation, "repoqa") == 1024  # evalplus/repoqa default
    assert max_new_tokens_for(cfg.evaluation, "qa") == 24
    cfg = load_config(None, ["evaluation.max_new_tokens_by_task={repoqa: 300, qa: 8}"])
    assert max_new_tokens_for(cfg.evaluation, "repoqa") == 300
    assert max_new_tokens_for(cfg.evaluation, "qa") == 8


@pytest.mark.parametrize("bad, key", [
    ("{ae: 10}", "evaluation.max_new_tokens_by_task.ae"),
    ("{repoqa: 0}", "evaluation.max_new_tokens_by_task.repoqa"),
    ("{repqa: 10}", "evaluation.max_new_tokens_by_task.repqa"),
])
def test_bad_per_task_budget_names_the_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, [f"evaluation.max_new_tokens_by_task={bad}"])


@pytest.mark.parametrize("kind", ["qwen3", "mistral"])
def test_reference_answers_fit_the_repoqa_budget(kind, tmp_path):
    """A perfect model emits the template's rendering of the reference answer; cut at each
    example's budget and scored, it must get similarity 1.0 and pass@0.8 1.0."""
    from icae.data.io import read_jsonl
    from icae.evaluation.policy import ContextPolicy
    from icae.tasks import TaskContext

    build_repoqa = TASKS["repoqa"].build_examples
    from icae.models.templates import PromptBuilder
    from icae.models.task_prompts import repoqa_answer, repoqa_messages

    tok = _tokenizer(kind)
    pb = PromptBuilder(tok)
    rows = read_jsonl(REPO / "data" / "samples" / "repoqa" / "eval.jsonl.gz")
    cfg = load_config(None, ["evaluation.max_new_tokens=64", "model.model_type=llm"])
    tctx = TaskContext(cfg, pb, ContextPolicy(cfg.model), pb.stop_token_ids())
    examples = build_repoqa(rows, tctx)
    stops = set(pb.stop_token_ids())
    longest = 0
    for row, ex in zip(rows, examples):
        msgs = repoqa_messages(row["description"], cfg.data.repoqa.instruction, False)
        target = pb.encode(pb.target_text(msgs, repoqa_answer(row)))
        cut = next((i for i, t in enumerate(target) if t in stops), len(target))
        longest = max(longest, cut)
        generated = target[:cut][: ex.max_new_tokens]  # what generate_examples keeps
        s = score("repoqa", ex, tok.decode(generated, skip_special_tokens=True), generated)
        # Uncut, the answer scores 1.0 except where the ast-based function extraction
        # drops a comment after the function's last statement (one sample, 0.98).
        full = score("repoqa", ex, repoqa_answer(row), target[:cut])
        assert s["similarity"] == pytest.approx(full["similarity"]), row["id"]
        assert s["similarity"] > 0.98, row["id"]
        assert s["pass@0.8"] == 1.0 and s["similarity_pass@0.8"] == 1.0, row["id"]
    assert longest > 64  # the shared 64-token budget would have cut some answers


# --- item 5: official pass@0.8 ---------------------------------------------------------------

BASE = "\n".join(f"    total = total + value_{i} * weight_{i}" for i in range(12))
TARGET = f"def accumulate(values, weights):\n    total = 0\n{BASE}\n    return total"
TWIN = TARGET.replace("return total", "return total + 1")


def _example(needles):
    return Example(id="t", prompt=[], reference=TARGET, max_new_tokens=10,
                   context_lengths=[1], meta={"language": "python", "needle_name": "target"},
                   needles=needles)


def test_official_pass_requires_the_target_to_be_the_best_needle():
    answer = f"```python\n{TWIN}\n```"  # copies the other needle
    assert M.repoqa_similarity(answer, TARGET, "python") >= 0.8
    both = _example({"target": TARGET, "twin": TWIN})
    s = score("repoqa", both, answer, [])
    assert s["similarity_pass@0.8"] == 1.0  # the loose variant passes ...
    assert s["pass@0.8"] == 0.0 and s["best_needle_match"] == 0.0  # ... the official fails
    alone = _example({"target": TARGET})
    s = score("repoqa", alone, answer, [])
    assert s["pass@0.8"] == 1.0 and s["best_needle_match"] == 1.0
    right = score("repoqa", both, f"```python\n{TARGET}\n```", [])
    assert right["pass@0.8"] == 1.0 and right["similarity"] == pytest.approx(1.0)


def test_repo_needles_group_the_whole_eval_file_by_repository():
    from icae.tasks.repoqa import repo_needles

    rows = [{"language": "python", "repo": "a", "needle_name": "f", "needle_code": "F"},
            {"language": "python", "repo": "a", "needle_name": "g", "needle_code": "G"},
            {"language": "go", "repo": "a", "needle_name": "f", "needle_code": "GOF"},
            {"language": "python", "repo": "b", "needle_name": "h", "needle_code": "H",
             "repo_needles": {"h": "H", "i": "I"}}]
    assert repo_needles(rows) == {("python", "a"): {"f": "F", "g": "G"},
                                  ("go", "a"): {"f": "GOF"},
                                  ("python", "b"): {"h": "H", "i": "I"}}


# --- item 7: the seed's teacher-forced text metrics ---------------------------------------


def test_teacher_forced_text_scores(tiny_tok):
    from icae.evaluation.run import teacher_forced_text_scores

    ids = tiny_tok("run the tests\nthen stop", add_special_tokens=False)["input_ids"]
    assert teacher_forced_text_scores(tiny_tok, ids, ids) == {
        "tf_bleu1": 1.0, "tf_seed_exact_match_first_line": 1.0}
    other = tiny_tok("run the tests\nand more", add_special_tokens=False)["input_ids"]
    s = teacher_forced_text_scores(tiny_tok, other, ids)
    assert s["tf_seed_exact_match_first_line"] == 1.0  # first lines agree
    assert 0 < s["tf_bleu1"] < 1
