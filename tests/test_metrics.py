"""Tests for icae.evaluation.metrics (hand-checked values and reference parity)."""

from __future__ import annotations

import gzip
import json
import math
import sys
import warnings
from pathlib import Path

import pytest

from icae.evaluation import metrics as M
from icae.evaluation import repoqa_code as C

SQUAD_DEV = Path("/work/shared/data/squad/dev-v1.1.json.gz")


# ---------------------------------------------------------------------------
# BLEU-1 and the offline word tokeniser
# ---------------------------------------------------------------------------

# Expected ``nltk.word_tokenize`` output (trained English Punkt + NLTKWordTokenizer),
# written by hand. Multi-sentence samples check that sentence-internal periods
# are split off as word_tokenize does.
WORD_TOKENIZE_EXPECTED: list[tuple[str, list[str]]] = [
    (
        "I don't know. He said it's fine!",
        ["I", "do", "n't", "know", ".", "He", "said", "it", "'s", "fine", "!"],
    ),
    (
        'Mr. Smith paid $3.50 for the "best" apples, didn\'t he?',
        ["Mr.", "Smith", "paid", "$", "3.50", "for", "the", "``", "best", "''", "apples", ",",
         "did", "n't", "he", "?"],
    ),
    (
        "The model compresses context. It then decodes (slowly) into text.",
        ["The", "model", "compresses", "context", ".", "It", "then", "decodes", "(", "slowly",
         ")", "into", "text", "."],
    ),
    (
        "We can't stop; they won't either: it's 9 a.m. now.",
        ["We", "ca", "n't", "stop", ";", "they", "wo", "n't", "either", ":", "it", "'s", "9",
         "a.m.", "now", "."],
    ),
    (
        "Hello world... what's next? Nothing.",
        ["Hello", "world", "...", "what", "'s", "next", "?", "Nothing", "."],
    ),
    (
        "It cost 1,000 dollars in 1990. The price rose.",
        ["It", "cost", "1,000", "dollars", "in", "1990", ".", "The", "price", "rose", "."],
    ),
    (
        "They sell apples, pears, etc. The shop opens at nine.",
        ["They", "sell", "apples", ",", "pears", ",", "etc", ".", "The", "shop", "opens", "at",
         "nine", "."],
    ),
    (
        "I gotta go, cannot wait. She'll see.",
        ["I", "got", "ta", "go", ",", "can", "not", "wait", ".", "She", "'ll", "see", "."],
    ),
    (
        "Prices rose 5% in the U.S. last year.",
        ["Prices", "rose", "5", "%", "in", "the", "U.S.", "last", "year", "."],
    ),
]


def _real_word_tokenize():
    """nltk.word_tokenize when the Punkt data is installed, else None."""
    import nltk

    try:
        nltk.word_tokenize("A test. Another one.")
    except LookupError:
        return None
    return nltk.word_tokenize


def _expected_tokens(text: str, hand: list[str]) -> list[str]:
    real = _real_word_tokenize()
    return real(text) if real is not None else hand


@pytest.mark.parametrize("text,hand", WORD_TOKENIZE_EXPECTED)
def test_offline_tokenisation_matches_word_tokenize(text, hand):
    assert M.word_tokenize_offline(text) == _expected_tokens(text, hand)


def test_sentence_splitting_is_what_makes_tokens_match():
    # Without sentence splitting, NLTKWordTokenizer leaves internal periods
    # attached ("know." instead of "know", "."); the comparison above would catch it.
    from nltk.tokenize import NLTKWordTokenizer

    multi = [
        (t, h)
        for t, h in WORD_TOKENIZE_EXPECTED
        if any(s.endswith(".") for s in M.sentence_split_offline(t)[:-1])
    ]
    assert len(multi) >= 5
    for text, hand in multi:
        assert NLTKWordTokenizer().tokenize(text) != _expected_tokens(text, hand)


def test_offline_sentence_split_keeps_abbreviations_and_initials():
    assert M.sentence_split_offline("Dr. J. Smith met Mr. Jones. They talked.") == [
        "Dr. J. Smith met Mr. Jones.",
        "They talked.",
    ]


def test_bleu1_equals_seed_bleu_on_word_tokenize_tokens():
    from nltk.translate.bleu_score import sentence_bleu

    # Pair every sample with the next one as hypothesis, plus a self-pair, and
    # compare with the seed's formula applied to the expected word_tokenize tokens.
    items = WORD_TOKENIZE_EXPECTED
    diffs = []
    for k, (ref, ref_hand) in enumerate(items):
        hyp, hyp_hand = items[(k + 1) % len(items)]
        for r, rh, h, hh in ((ref, ref_hand, hyp, hyp_hand), (ref, ref_hand, ref, ref_hand)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seed = sentence_bleu(
                    [_expected_tokens(r, rh)], _expected_tokens(h, hh), weights=(1, 0, 0, 0)
                )
            diffs.append(abs(M.bleu1(r, h) - seed))
    assert max(diffs) < 1e-12


def test_bleu1_hand_checked_values():
    assert M.bleu1("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert M.bleu1("the cat sat on the mat", "dogs bark loudly") == 0.0
    # c=2 < r=6: p1 = 1, BP = exp(1 - 6/2)
    assert M.bleu1("the cat sat on the mat", "the cat") == pytest.approx(math.exp(-2), abs=1e-12)
    # clipping: "the" occurs twice in the reference, 7 times in the hypothesis
    assert M.bleu1("the cat is on the mat", "the the the the the the the") == pytest.approx(2 / 7)
    # longer hypothesis: no brevity penalty, p1 = 3/5
    assert M.bleu1("the cat sat", "the cat sat down today") == pytest.approx(0.6)
    # tokenisation matters: "don't" -> "do", "n't"; 4 of 5 tokens match
    assert M.bleu1("I don't know.", "I do not know.") == pytest.approx(0.8)


def test_bleu1_empty_inputs_return_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.bleu1("", "something") == 0.0
        assert M.bleu1("something", "") == 0.0
        assert M.bleu1("", "") == 0.0
        assert M.bleu1("   ", "a") == 0.0
        # zero bigram overlap triggers NLTK's warning internally; it must not leak
        assert M.bleu1("a b c", "c b a") == pytest.approx(1.0)


def test_bleu1_custom_tokenizer():
    assert M.bleu1("a b c d", "a b", tokenize=str.split) == pytest.approx(math.exp(1 - 4 / 2))


# ---------------------------------------------------------------------------
# SQuAD v1.1
# ---------------------------------------------------------------------------


def test_normalize_answer():
    assert M.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert M.normalize_answer("An apple a day") == "apple day"
    assert M.normalize_answer("theater") == "theater"  # article only as a whole word
    assert M.normalize_answer("U.S.-based") == "usbased"
    assert M.normalize_answer("\tA\n") == ""


def test_squad_hand_checked():
    # tokens [cat, sat, on, mat] vs [cat, sat, on, hat]: 3 common -> p = r = 3/4
    assert M.squad_f1("the cat sat on the mat", ["a cat sat on a hat"]) == pytest.approx(0.75)
    # multiset intersection: x:min(3,1), y:min(1,2) -> 2; p = 2/4, r = 2/3 -> F1 = 4/7
    assert M.squad_f1("x x x y", ["x y y"]) == pytest.approx(4 / 7)
    assert M.squad_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # max over gold answers
    assert M.squad_f1("Denver Broncos", ["Broncos", "Denver Broncos", "the Broncos"]) == 1.0
    assert M.squad_exact_match("The Denver Broncos.", ["Broncos", "denver broncos"]) == 1.0
    assert M.squad_exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert M.squad_f1("nothing shared", ["Denver Broncos"]) == 0.0
    # official v1.1 quirk: both sides normalise to "" -> EM 1 but F1 0
    assert M.squad_exact_match(".", ["."]) == 1.0
    assert M.squad_f1(".", ["."]) == 0.0


def test_squad_rejects_bad_ground_truths():
    with pytest.raises(ValueError):
        M.squad_f1("x", [])
    with pytest.raises(TypeError):
        M.squad_exact_match("x", "x")


def test_squad_corpus_hand_checked():
    refs = {"q1": ["big dog"], "q2": ["c d"], "q3": ["e"]}
    preds = {"q1": "dog", "q2": "C. D", "unknown": "z"}  # q3 unanswered -> 0
    scores = M.squad_corpus_scores(preds, refs)
    assert set(scores) == {"exact_match", "f1"}
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 3)
    with pytest.raises(ValueError):
        M.squad_corpus_scores({}, {})


def _load_squad_questions(step: int = 10):
    if not SQUAD_DEV.exists():
        pytest.skip(f"{SQUAD_DEV} not present")
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        data = json.load(f)["data"]
    questions = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                questions.append((qa["id"], para["context"], qa["answers"]))
    return questions[::step]


def _perturb(i: int, questions) -> str:
    """Deterministic prediction for question i, cycling through perturbation kinds."""
    _, context, answers = questions[i]
    gold = answers[0]["text"]
    words = gold.split()
    kind = i % 10
    if kind == 0:
        return gold
    if kind == 1:  # truncate
        return " ".join(words[: max(1, len(words) // 2)]) if len(words) > 1 else gold[: max(1, len(gold) // 2)]
    if kind == 2:  # add article
        return "the " + gold
    if kind == 3:  # change case
        return gold.upper()
    if kind == 4:  # another question's answer
        return questions[(i + 1) % len(questions)][2][0]["text"]
    if kind == 5:  # context window around the answer
        start = answers[0]["answer_start"]
        return context[max(0, start - 15): start + len(gold) + 15]
    if kind == 6:  # punctuation
        return f'"{gold}."'
    if kind == 7:  # last gold answer padded with words
        return "it is " + answers[-1]["text"] + " indeed"
    if kind == 8:
        return ""
    return " ".join(reversed(words))


def _both_empty(pred: str, golds: list[str]) -> bool:
    return M.normalize_answer(pred) == "" and any(M.normalize_answer(g) == "" for g in golds)


@pytest.fixture
def float64_default():
    # torchmetrics accumulates in the default dtype; float32 sums over ~1000
    # questions drift by ~1e-5 percent, so compare in float64.
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_squad_parity_with_torchmetrics(float64_default):
    pytest.importorskip("torchmetrics")
    import torchmetrics.functional.text  # noqa: F401  (loads the squad submodule)
    from torchmetrics.functional.text import squad as tm_squad

    tm = sys.modules["torchmetrics.functional.text.squad"]
    questions = _load_squad_questions()
    assert len(questions) > 1000

    preds, refs, tm_preds, tm_target = {}, {}, [], []
    skipped_both_empty = 0
    for i, (qid, _, answers) in enumerate(questions):
        golds = [a["text"] for a in answers]
        pred = _perturb(i, questions)
        if _both_empty(pred, golds):
            # torchmetrics follows SQuAD v2 here (F1 = 1); see the test below.
            skipped_both_empty += 1
            continue
        refs[qid] = golds
        tm_target.append({"id": qid, "answers": {"text": golds, "answer_start": [a["answer_start"] for a in answers]}})
        # per question: identical EM/F1
        f1_tm = float(tm._metric_max_over_ground_truths(tm._compute_f1_score, pred, golds))
        em_tm = float(tm._metric_max_over_ground_truths(tm._compute_exact_match_score, pred, golds))
        assert M.squad_f1(pred, golds) == pytest.approx(f1_tm, abs=1e-6), (qid, pred, golds)
        assert M.squad_exact_match(pred, golds) == em_tm, (qid, pred, golds)
        if i % 50 == 49:
            continue  # leave some questions unanswered: both score them 0
        preds[qid] = pred
        tm_preds.append({"id": qid, "prediction_text": pred})
    assert skipped_both_empty <= 3

    mine = M.squad_corpus_scores(preds, refs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns per unanswered question
        theirs = tm_squad(tm_preds, tm_target)
    assert mine["exact_match"] == pytest.approx(float(theirs["exact_match"]), abs=1e-6)
    assert mine["f1"] == pytest.approx(float(theirs["f1"]), abs=1e-6)
    # the perturbations must produce a spread of scores, otherwise parity is vacuous
    assert 20 < mine["exact_match"] < 80
    assert mine["exact_match"] < mine["f1"] < 90


def test_known_divergence_from_torchmetrics_on_empty_answers():
    pytest.importorskip("torchmetrics")
    import torchmetrics.functional.text  # noqa: F401

    tm = sys.modules["torchmetrics.functional.text.squad"]
    assert M.squad_f1("", ["."]) == 0.0  # official v1.1
    assert float(tm._compute_f1_score("", ".")) == 1.0  # v2-style no-answer rule


# ---------------------------------------------------------------------------
# RepoQA
# ---------------------------------------------------------------------------

NEEDLE_PY = '''def add(a, b):
    """Add two numbers."""
    total = a + b  # sum
    return total'''


def test_function_similarity_hand_checked():
    assert M.compute_function_similarity(NEEDLE_PY, NEEDLE_PY) == pytest.approx(1.0)
    # whitespace layout does not matter: tokens are re.split(r"\s+")
    assert M.compute_function_similarity("def f(x):\n\n    return   x", "def f(x): return x") == pytest.approx(1.0)
    # no zero counts: plain BLEU-4, (4/5 * 3/4 * 2/3 * 1/2) ** (1/4)
    assert M.compute_function_similarity("a b c d e", "a b c d f") == pytest.approx(0.2 ** 0.25)
    # zero 4-gram matches: method4 replaces p4 by 1 / (2 * k / ln(c)) / 3, k = 5, c = 6
    p4 = (math.log(6) / 10) / 3
    expected = (5 / 6 * 3 / 5 * 1 / 4 * p4) ** 0.25
    assert M.compute_function_similarity("a b x d e f", "a b c d e f") == pytest.approx(expected, rel=1e-12)
    assert M.compute_function_similarity("x y z w", "a b c d") == 0.0


def test_extract_code_blocks():
    text = "Sure:\n```python\ndef f():\n    pass\n```\nand\n```\nx = 1\n```\n"
    assert C.extract_code_blocks(text) == ["def f():\n    pass\n", "x = 1\n"]
    assert C.extract_code_blocks("  no fences here  ") == ["no fences here"]
    # a fence that does not start a line is not a block (RepoQA's MULTILINE ^)
    assert C.extract_code_blocks("inline ```x``` only") == ["inline ```x``` only"]


def test_sanitize_picks_first_function_like_repoqa():
    out = (
        "Here it is:\n\n```python\nimport os\n\n@cache\n" + NEEDLE_PY
        + "\n\ndef other():\n    pass\n```\nbye"
    )
    assert C.sanitize_repoqa_output(out, "python") == NEEDLE_PY
    # first block without a function is skipped in favour of one that has one
    out2 = "```\nprint(1)\n```\n```python\ndef g():\n    return 2\n```"
    assert C.sanitize_repoqa_output(out2, "python") == "def g():\n    return 2"
    # no function anywhere: first block; no block: whole stripped output
    assert C.sanitize_repoqa_output("```\nx = 1\n```\n```\ny = 2\n```", "python") == "x = 1\n"
    assert C.sanitize_repoqa_output("  def h(): pass  ", "python") == "def h(): pass"


def test_extract_first_function_python_unparsable_falls_back_to_indentation():
    code = "def f(a,\n      b):\n    x = (\n    return x\nprint('after')\n"
    assert C.extract_first_function(code, "python") == "def f(a,\n      b):\n    x = (\n    return x"


@pytest.mark.parametrize(
    "language,code,expected",
    [
        (
            "java",
            "public class A {\n    @Override\n    public static <T> List<T> foo(int a) throws IOException {\n"
            "        if (a > 0) { return null; }\n        return bar(\"}\");\n    }\n}\n",
            "@Override\n    public static <T> List<T> foo(int a) throws IOException {\n"
            "        if (a > 0) { return null; }\n        return bar(\"}\");\n    }",
        ),
        (
            "cpp",
            "#include <vector>\nint helper(int);\nstd::vector<int> Foo::bar(const std::string& s) const {\n"
            "    x.push_back('}'); // }\n    return x;\n}\nint main() { return 0; }\n",
            "std::vector<int> Foo::bar(const std::string& s) const {\n"
            "    x.push_back('}'); // }\n    return x;\n}",
        ),
        (
            "rust",
            "use std::io;\npub fn longest<'a>(x: &'a str, y: &'a str) -> &'a str {\n"
            "    if x.len() > y.len() { x } else { y }\n}\n",
            "pub fn longest<'a>(x: &'a str, y: &'a str) -> &'a str {\n"
            "    if x.len() > y.len() { x } else { y }\n}",
        ),
        (
            "go",
            "package main\nfunc (s *Server) Handle(w http.ResponseWriter) {\n\tfmt.Println(`raw } string`)\n}\n",
            "func (s *Server) Handle(w http.ResponseWriter) {\n\tfmt.Println(`raw } string`)\n}",
        ),
        (
            "typescript",
            "export async function fetchAll(urls: string[]): Promise<string[]> {\n  return x.map(u => { return u; });\n}\n",
            "async function fetchAll(urls: string[]): Promise<string[]> {\n  return x.map(u => { return u; });\n}",
        ),
    ],
)
def test_extract_first_function_c_like(language, code, expected):
    assert C.extract_first_function(code, language) == expected


def test_extract_first_function_none_and_bad_language():
    assert C.extract_first_function("x = 1\n", "python") is None
    assert C.extract_first_function("int f(int);\n", "cpp") is None  # declaration only
    assert C.extract_first_function("if (x) {\n  y();\n}\n", "java") is None
    with pytest.raises(ValueError):
        C.extract_first_function("", "cobol")


def test_remove_comments_python():
    code = (
        'X = "module # string"\n"""module docstring stays"""\n'
        "def f(a):\n    '''doc'''\n    s = '# not a comment'  # real comment\n    return s\n"
    )
    out = C.remove_comments(code, "python")
    assert "# real comment" not in out and "doc'''" not in out
    assert "'# not a comment'" in out and '"module # string"' in out
    assert '"""module docstring stays"""' in out
    assert C.remove_comments_and_blank_lines(code, "python") == (
        'X = "module # string"\n"""module docstring stays"""\n'
        "def f(a):\n    s = '# not a comment'  \n    return s"
    )


def test_remove_comments_c_like():
    code = 'int f() {\n  // line\n  char c = \'/\'; /* block\n spans */ return g("// no", c);\n}\n'
    assert C.remove_comments_and_blank_lines(code, "cpp") == (
        "int f() {\n  char c = '/';  return g(\"// no\", c);\n}"
    )
    rust = "fn f<'a>(x: &'a str) -> &'a str { x } // tail\n"
    assert C.remove_comments(rust, "rust") == "fn f<'a>(x: &'a str) -> &'a str { x } \n"


def test_repoqa_similarity_and_pass():
    answer = f"The function is:\n```python\n{NEEDLE_PY}\n```\n"
    assert M.repoqa_similarity(answer, NEEDLE_PY, "python") == pytest.approx(1.0)

    commented = f"```python\n# helper\n{NEEDLE_PY.replace('# sum', '# add them up please')}\n```"
    raw = M.repoqa_similarity(commented, NEEDLE_PY, "python")
    assert raw < 1.0
    assert M.repoqa_similarity(commented, NEEDLE_PY, "python", ignore_comments=True) == pytest.approx(1.0)

    # RepoQA scores the first function only; "max" looks at every block
    two = f"```python\ndef wrong():\n    return 0\n```\n```python\n{NEEDLE_PY}\n```"
    assert M.repoqa_similarity(two, NEEDLE_PY, "python") < 0.2
    assert M.repoqa_similarity(two, NEEDLE_PY, "python", select="max") == pytest.approx(1.0)

    assert M.repoqa_pass(0.8) and M.repoqa_pass(1.0)
    assert not M.repoqa_pass(0.7999)
    assert M.repoqa_pass(0.5, threshold=0.5)


def test_repoqa_needle_search():
    needles = {
        "add": NEEDLE_PY,
        "sub": "def sub(a, b):\n    return a - b",
    }
    answer = f"```python\n{NEEDLE_PY}\n```"
    res = M.repoqa_needle_search(answer, needles, target="add", language="python")
    assert res == {"best_name": "add", "best_similarity": pytest.approx(1.0), "is_best_match": True, "passed": True}

    res = M.repoqa_needle_search(answer, needles, target="sub", language="python")
    assert not res["is_best_match"] and not res["passed"]

    # best match but below threshold
    partial = "```python\ndef sub(a, b):\n    return b\n```"
    res = M.repoqa_needle_search(partial, needles, target="sub", language="python")
    assert res["best_name"] == "sub" and res["best_similarity"] < 0.8 and not res["passed"]
    assert M.repoqa_needle_search(partial, needles, "sub", "python", threshold=0.3)["passed"]

    # similar to nothing: no best target
    res = M.repoqa_needle_search("```python\nzzz\n```", needles, target="add", language="python")
    assert res["best_name"] is None and res["best_similarity"] == 0.0 and not res["passed"]


# ---------------------------------------------------------------------------
# Trajectory metrics, throughput, aggregation
# ---------------------------------------------------------------------------


def test_token_accuracy():
    assert M.token_accuracy([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert M.token_accuracy([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    assert M.token_accuracy([1, 2], [1, 2, 3, 4]) == 0.5  # short prediction: missing = wrong
    assert M.token_accuracy([1, 2, 3, 4, 5, 6], [1, 2, 3, 4]) == 1.0  # extra tokens ignored
    assert M.token_accuracy([2, 3, 4], [1, 2, 3]) == 0.0  # position-aligned, no shifting
    assert M.token_accuracy([], [7]) == 0.0
    assert math.isnan(M.token_accuracy([1], []))


def test_exact_match():
    assert M.exact_match("  hello world\n", "hello world") == 1.0
    assert M.exact_match("Hello world", "hello world") == 0.0
    assert M.exact_match("hello  world", "hello world") == 0.0


def test_compression_stats():
    s = M.compression_stats([512, 256, 100], [128, 128, 25])
    assert s["per_turn_rate"] == [4.0, 2.0, 4.0]
    assert s["overall_rate"] == pytest.approx(868 / 281)  # token-weighted, not mean(4, 2, 4)
    assert (s["total_original"], s["total_compressed"], s["num_turns"]) == (868, 281, 3)
    z = M.compression_stats([10, 0], [0, 0])
    assert z["per_turn_rate"][0] == math.inf and math.isnan(z["per_turn_rate"][1])
    assert z["overall_rate"] == math.inf
    e = M.compression_stats([], [])
    assert e["num_turns"] == 0 and math.isnan(e["overall_rate"])
    with pytest.raises(ValueError):
        M.compression_stats([1, 2], [1])
    with pytest.raises(ValueError):
        M.compression_stats([-1], [1])


def test_throughput():
    assert M.throughput(1000, 2.0) == 500.0
    assert M.throughput(1000, 0.0) == 0.0
    assert M.throughput(0, 3.0) == 0.0
    with pytest.raises(ValueError):
        M.throughput(10, -1.0)


def test_aggregate_mean():
    assert M.aggregate_mean([1.0, 2.0, 4.0]) == pytest.approx(7 / 3)
    assert M.aggregate_mean(iter([0.1] * 10)) == 0.1  # fsum: exact, unlike sum()/10
    assert math.isnan(M.aggregate_mean([]))
    assert math.isnan(M.aggregate_mean([1.0, float("nan")]))


# --- the seed's trajectory metrics (issue 10, item 7) ----------------------------------


def test_seed_exact_match_compares_normalised_first_lines():
    from icae.evaluation.metrics import exact_match, seed_exact_match_first_line

    pred = "1. Run the Tests!\nthen something else entirely"
    ref = "run tests\nand a different second line"
    assert seed_exact_match_first_line(pred, ref) == 1.0
    assert exact_match(pred, ref) == 0.0  # the strict one still differs
    assert seed_exact_match_first_line("ls -la", "cat file") == 0.0
    assert seed_exact_match_first_line("", "\nanything") == 1.0  # both first lines empty


def test_seed_token_accuracy_pads_to_the_longer_sequence():
    from icae.evaluation.metrics import seed_token_accuracy, token_accuracy

    ref = [1, 2, 3, 4]
    assert seed_token_accuracy([1, 2, 3, 4, 5, 6], ref) == pytest.approx(4 / 6)
    assert token_accuracy([1, 2, 3, 4, 5, 6], ref) == 1.0  # strict: reference positions
    assert seed_token_accuracy([1, 2], ref) == pytest.approx(2 / 4)
    assert seed_token_accuracy([9, 2, 3, 4], ref) == pytest.approx(3 / 4)
    assert seed_token_accuracy([], [5]) == 0.0
    assert math.isnan(seed_token_accuracy([], []))


def test_bleu4_hand_checked_values():
    # Identical: every n-gram precision is 1.
    assert M.bleu4("a b c d e f", "a b c d e f", tokenize=str.split) == pytest.approx(1.0)
    # Two neighbours swapped ("a b d c e f"): unigrams 6/6, bigrams 2/5 (ab, ef),
    # trigrams 0/4 -> no trigram in common, so unsmoothed BLEU-4 is (NLTK's) ~0.
    assert M.bleu4("a b c d e f", "a b d c e f", tokenize=str.split) < 1e-70
    assert M.bleu1("a b c d e f", "a b d c e f", tokenize=str.split) == 1.0
    # One extra word at the start ("x a b c d e f"): BLEU-1 6/7, and the shift-robust
    # higher orders: 5/6, 4/5, 3/4, no brevity penalty (c = 7 > r = 6).
    expected = math.exp((math.log(6 / 7) + math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4)) / 4)
    assert M.bleu4("a b c d e f", "x a b c d e f", tokenize=str.split) == pytest.approx(expected)
    # ...where position-aligned token accuracy sees almost nothing.
    assert M.token_accuracy([9, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]) == 0.0
    # Brevity penalty as in BLEU-1: hypothesis "a b c d" of reference "a b c d e f".
    assert M.bleu4("a b c d e f", "a b c d", tokenize=str.split) == pytest.approx(
        math.exp(1 - 6 / 4))


def test_bleu4_empty_or_short_inputs_return_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.bleu4("", "something") == 0.0
        assert M.bleu4("something", "") == 0.0
        assert M.bleu4("a b c", "a b c") < 1e-70  # no 4-gram at all
        assert M.bleu4("a b c d", "d c b a", tokenize=str.split) < 1e-70


def test_bleu4_equals_nltk_default_sentence_bleu():
    from nltk.translate.bleu_score import sentence_bleu

    ref = "The quick brown fox jumps over the lazy dog near the river bank."
    hyp = "The quick brown fox jumped over a lazy dog near the river bank."
    tokens = M.word_tokenize_offline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nltk_value = sentence_bleu([tokens(ref)], tokens(hyp))
    assert 0.3 < nltk_value < 0.9
    assert M.bleu4(ref, hyp) == pytest.approx(nltk_value, abs=1e-12)
