"""Pure metric functions for ICAE evaluation (no model imports, no file I/O).

Contents
--------
* BLEU-1 as the ICAE seed computes it (NLTK ``sentence_bleu`` over word tokens) and
  BLEU-4 on the same tokens,
  with an offline replacement for ``nltk.word_tokenize`` (see :func:`word_tokenize_offline`).
* SQuAD v1.1 exact match / F1, a line-by-line port of the official ``evaluate-v1.1.py``.
* RepoQA "Search Needle Function" scoring, mirroring ``repoqa/compute_score.py`` and
  ``repoqa/metric.py`` of evalplus/repoqa (see :func:`compute_function_similarity`); the
  code parsing it needs is :mod:`icae.evaluation.repoqa_code`.
* Trajectory metrics (token accuracy, exact match, compression statistics),
  throughput and a documented mean.

NLTK is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable, Literal, Mapping, Sequence

from icae.evaluation.repoqa_code import (check_language, extract_code_blocks,
                                         extract_first_function, remove_comments,
                                         sanitize_repoqa_output)

__all__ = [
    "word_tokenize_offline",
    "sentence_split_offline",
    "bleu1",
    "bleu4",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_corpus_scores",
    "compute_function_similarity",
    "repoqa_similarity",
    "repoqa_pass",
    "repoqa_needle_search",
    "token_accuracy",
    "exact_match",
    "seed_normalize_text",
    "seed_exact_match_first_line",
    "seed_token_accuracy",
    "compression_stats",
    "throughput",
    "aggregate_mean",
]

# ---------------------------------------------------------------------------
# 1. BLEU-1
# ---------------------------------------------------------------------------

# Abbreviations that the pre-trained English Punkt model also treats as
# abbreviations; without them every "Mr." would end a sentence and lose its
# period to the word tokenizer. Lower-case, without the final period, internal
# periods kept -- the form Punkt stores in ``abbrev_types``.
_ENGLISH_ABBREVIATIONS: frozenset[str] = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft messrs mme mlle rev hon gen gov sen rep col lt
    sgt capt cmdr adm maj cpl pvt supt inc corp co ltd bros vs etc cf al approx
    dept univ assn e.g i.e a.m p.m u.s u.k u.n u.s.a d.c jan feb apr jun jul aug
    sep sept oct nov dec
    """.split()
)

# Very common words that occur both capitalised at a sentence start and in
# lower case mid-sentence. The trained Punkt model records this ("ortho
# context") and uses it to decide that e.g. "etc. The" *does* end a sentence
# while "Mr. Smith" does not; seeding these few words reproduces that decision
# for the frequent cases.
_COMMON_SENTENCE_STARTERS: tuple[str, ...] = tuple(
    """
    the a an this that these those it its he she they we you i there here in on at
    for from with by of to as if but and or so then when while after before
    however although because since this his her their our my your what which who
    how why where all some many most no not one two it's
    """.split()
)


@lru_cache(maxsize=1)
def _offline_punkt():
    """Punkt with hand-set parameters instead of the downloadable English model."""
    from nltk.tokenize import punkt

    params = punkt.PunktParameters()
    params.abbrev_types = set(_ENGLISH_ABBREVIATIONS)
    # Private flag constants, but stable across NLTK releases since 3.0.
    seen_both_cases = punkt._ORTHO_BEG_UC | punkt._ORTHO_MID_LC
    for word in _COMMON_SENTENCE_STARTERS:
        params.add_ortho_context(word, seen_both_cases)
    # The constructor documents that a PunktParameters object may be passed
    # instead of training text.
    return punkt.PunktSentenceTokenizer(params)


@lru_cache(maxsize=1)
def _nltk_word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def sentence_split_offline(text: str) -> list[str]:
    """Split ``text`` into sentences with NLTK's Punkt algorithm, offline.

    ``nltk.sent_tokenize`` loads the trained English Punkt model (``punkt`` /
    ``punkt_tab``), a separate download that is unavailable here. This runs the
    same :class:`nltk.tokenize.punkt.PunktSentenceTokenizer` algorithm with a
    :class:`~nltk.tokenize.punkt.PunktParameters` that holds only a hand-written
    abbreviation list and the case statistics of a few very common words
    (no collocations, no learned sentence starters).
    """
    return _offline_punkt().tokenize(text)


def word_tokenize_offline(text: str) -> list[str]:
    """``nltk.word_tokenize`` without the Punkt download.

    Definition (identical in structure to ``nltk.word_tokenize(text)``)::

        tokens = [t for s in sentence_split_offline(text)
                    for t in NLTKWordTokenizer().tokenize(s)]

    ``nltk.word_tokenize`` is ``sent_tokenize`` (trained Punkt) followed by
    ``NLTKWordTokenizer`` per sentence. The word tokenizer needs no data and is
    used unchanged, so punctuation splitting, contractions ("don't" -> "do",
    "n't"), quotes (``"`` -> ````/``''``) and so on are exactly NLTK's. The
    sentence splitter matters only because ``NLTKWordTokenizer`` splits off a
    period solely at the *end* of its input: a sentence-internal "end." stays
    one token unless the text was cut there. The offline Punkt (see
    :func:`sentence_split_offline`) can therefore differ from the real one only
    where a period-final word followed by whitespace is judged differently
    (rare abbreviations, collocations such as "Nov. 5" learned by the trained
    model), and each such difference changes one token ("etc." vs "etc", ".").
    """
    tokenizer = _nltk_word_tokenizer()
    return [tok for sent in sentence_split_offline(text) for tok in tokenizer.tokenize(sent)]


def _sentence_bleu(reference: str, hypothesis: str, weights: tuple[float, ...],
                   tokenize: Callable[[str], list[str]] | None) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    tok = tokenize or word_tokenize_offline
    ref_tokens = tok(reference)
    hyp_tokens = tok(hypothesis)
    if not ref_tokens or not hyp_tokens:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([ref_tokens], hyp_tokens, weights=weights))


def bleu1(
    reference: str,
    hypothesis: str,
    tokenize: Callable[[str], list[str]] | None = None,
) -> float:
    """Sentence-level BLEU-1 as the ICAE seed computes it.

    The seed calls ``nltk.translate.bleu_score.sentence_bleu([word_tokenize(ref)],
    word_tokenize(hyp), weights=(1, 0, 0, 0))``, i.e. with ``c = |hyp|`` and
    ``r = |ref|`` tokens::

        p1   = sum_w min(count_hyp(w), count_ref(w)) / c      (clipped unigram precision)
        BP   = 1 if c > r else exp(1 - r / c)                  (brevity penalty)
        BLEU-1 = BP * p1

    ``tokenize`` defaults to :func:`word_tokenize_offline` because
    ``nltk.word_tokenize`` needs the Punkt download (pass ``nltk.word_tokenize``
    where that data is installed). An empty reference or hypothesis (after
    tokenisation) gives 0.0. NLTK warns about zero higher-order n-gram counts
    even though their weights are 0; those warnings are suppressed.
    """
    return _sentence_bleu(reference, hypothesis, (1, 0, 0, 0), tokenize)


def bleu4(
    reference: str,
    hypothesis: str,
    tokenize: Callable[[str], list[str]] | None = None,
) -> float:
    """Sentence-level BLEU-4: NLTK's default ``sentence_bleu`` (uniform weights over
    1- to 4-gram clipped precisions, no smoothing) on the tokens :func:`bleu1` uses::

        BLEU-4 = BP * exp(sum_{n=1..4} log(p_n) / 4)

    Why next to BLEU-1: BLEU-1 ignores word order (a reconstruction with words swapped
    scores as well as the text), and position-aligned token accuracy collapses after one
    inserted or dropped token; BLEU-4 rewards order and survives shifts. Without
    smoothing an n-gram order with no match (texts under 4 tokens included) gives
    NLTK's practically-zero value (below 1e-70) and its warning is suppressed; an empty
    reference or hypothesis gives 0.0.
    """
    return _sentence_bleu(reference, hypothesis, (0.25, 0.25, 0.25, 0.25), tokenize)


# ---------------------------------------------------------------------------
# 2. SQuAD v1.1 (port of the official evaluate-v1.1.py)
# ---------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Official SQuAD v1.1 normalisation.

    ``white_space_fix(remove_articles(remove_punc(lower(s))))``: lower-case, drop
    ASCII punctuation (``string.punctuation``), replace the words a/an/the by a
    space, then collapse whitespace.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1_single(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    # The official v1.1 script returns 0 here even when both sides normalise to
    # the empty string (v2.0 and torchmetrics return 1 in that case).
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _check_ground_truths(ground_truths: Sequence[str]) -> None:
    if isinstance(ground_truths, str):
        # A bare string would be iterated character by character.
        raise TypeError("ground_truths must be a list of strings, not a string")
    if len(ground_truths) == 0:
        raise ValueError("ground_truths must contain at least one answer")


def squad_exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """``max_g [normalize_answer(prediction) == normalize_answer(g)]`` as 0.0/1.0."""
    _check_ground_truths(ground_truths)
    norm_pred = normalize_answer(prediction)
    return float(max(norm_pred == normalize_answer(g) for g in ground_truths))


def squad_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """Official SQuAD v1.1 token F1, maximised over the gold answers.

    With ``P`` and ``G`` the multisets of normalised tokens and
    ``n = |P ∩ G|`` (``Counter`` intersection)::

        F1 = 0                       if n == 0
        F1 = 2 p r / (p + r),   p = n / |P|,  r = n / |G|   otherwise
    """
    _check_ground_truths(ground_truths)
    return max(_f1_single(prediction, g) for g in ground_truths)


def squad_corpus_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
) -> dict[str, float]:
    """Corpus EM and F1 in percent, as the official ``evaluate(dataset, predictions)``.

    ``references`` maps question id to its gold answer texts and defines the
    question set: ``total = len(references)``; a question missing from
    ``predictions`` scores 0 (the official script prints a warning there);
    predictions for unknown ids are ignored::

        exact_match = 100 * sum_q EM_q / total,   f1 = 100 * sum_q F1_q / total
    """
    total = len(references)
    if total == 0:
        raise ValueError("references is empty")
    em_sum = 0.0
    f1_sum = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        em_sum += squad_exact_match(predictions[qid], golds)
        f1_sum += squad_f1(predictions[qid], golds)
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total}


# ---------------------------------------------------------------------------
# 3. RepoQA "Search Needle Function"
# ---------------------------------------------------------------------------
#
# Source: evalplus/repoqa, repoqa/compute_score.py (needle_evaluator,
# sanitize_output, remove_comments, compute_score) and repoqa/metric.py
# (compute_function_similarity), as released in repoqa 0.1.x:
#
#   similarity = nltk sentence_bleu([re.split(r"\s+", needle.strip())],
#                                   re.split(r"\s+", candidate.strip()),
#                                   smoothing_function=SmoothingFunction().method4)
#
# i.e. BLEU-4 with uniform weights over whitespace tokens, Chen & Cherry
# smoothing method 4. The candidate is the first function that tree-sitter finds
# in the first fenced block that contains one (else the first block, else the
# whole stripped output). A task passes at threshold t if the needle most
# similar to the candidate is the target needle and its similarity >= t
# (RepoQA reports t = 0.0, 0.1, ..., 1.0; 0.8 is the headline number).
# Comments are removed (tree-sitter) only with --ignore-comments (default off).
#
# Reading the candidate out of the answer (code blocks, function extraction,
# comment removal) is icae.evaluation.repoqa_code.



def compute_function_similarity(candidate_function: str, reference_function: str) -> float:
    """RepoQA's ``compute_function_similarity`` (repoqa/metric.py), in [0, 1].

    ``sentence_bleu([ref_tokens], cand_tokens, smoothing_function=method4)`` --
    cumulative BLEU-4 (weights 1/4 each) with Chen & Cherry (2014) smoothing 4,
    tokens from ``re.split(r"\\s+", text.strip())``.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    candidate_tokens = re.split(r"\s+", candidate_function.strip())
    reference_tokens = re.split(r"\s+", reference_function.strip())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            sentence_bleu(
                [reference_tokens], candidate_tokens, smoothing_function=SmoothingFunction().method4
            )
        )


def repoqa_similarity(
    prediction_text: str,
    needle_code: str,
    language: str,
    ignore_comments: bool = False,
    select: Literal["repoqa", "max"] = "repoqa",
) -> float:
    """Similarity in [0, 1] between a model answer and the needle function.

    ``select="repoqa"`` (default) scores the single candidate RepoQA picks
    (:func:`sanitize_repoqa_output`). ``select="max"`` instead takes the maximum
    over all fenced blocks (each narrowed to its first function when it has
    one) -- more lenient than RepoQA, for diagnostics only.
    ``ignore_comments`` applies :func:`remove_comments` to both sides, like
    RepoQA's ``--ignore-comments`` (off by default there too).
    """
    lang = check_language(language)
    if select == "repoqa":
        candidates = [sanitize_repoqa_output(prediction_text, lang)]
    elif select == "max":
        candidates = []
        for block in extract_code_blocks(prediction_text):
            func = extract_first_function(block, lang)
            candidates.append(func if func is not None else block)
    else:
        raise ValueError(f"unknown select {select!r}")
    if ignore_comments:
        needle_code = remove_comments(needle_code, lang)
        candidates = [remove_comments(c, lang) for c in candidates]
    return max(compute_function_similarity(c, needle_code) for c in candidates)


def repoqa_pass(similarity: float, threshold: float = 0.8) -> bool:
    """``similarity >= threshold`` (RepoQA's comparison; 0.8 is its headline threshold).

    For the full RepoQA criterion, which also requires the target to be the most
    similar needle, use :func:`repoqa_needle_search`.
    """
    return similarity >= threshold


def repoqa_needle_search(
    prediction_text: str,
    needles: Mapping[str, str],
    target: str,
    language: str,
    threshold: float = 0.8,
    ignore_comments: bool = False,
) -> dict[str, object]:
    """RepoQA's ``needle_evaluator`` plus the pass test of ``compute_score``.

    Scores the sanitised answer against every needle of the repository
    (``needles`` maps name to code, in RepoQA's needle order). The best needle
    is the first one with the strictly highest similarity, starting from 0, so
    an answer similar to nothing has ``best_name=None``. Returns
    ``best_name``, ``best_similarity``, ``is_best_match`` (best is ``target``)
    and ``passed = is_best_match and best_similarity >= threshold``.
    """
    lang = check_language(language)
    candidate = sanitize_repoqa_output(prediction_text, lang)
    if ignore_comments:
        candidate = remove_comments(candidate, lang)
    best_name: str | None = None
    best_similarity = 0.0
    for name, code in needles.items():
        if ignore_comments:
            code = remove_comments(code, lang)
        sim = compute_function_similarity(candidate, code)
        if sim > best_similarity:
            best_similarity = sim
            best_name = name
    is_best = best_name == target
    return {
        "best_name": best_name,
        "best_similarity": best_similarity,
        "is_best_match": is_best,
        "passed": bool(is_best and best_similarity >= threshold),
    }


# ---------------------------------------------------------------------------
# 4. Trajectory metrics
# ---------------------------------------------------------------------------


def token_accuracy(pred_ids: Sequence[int], ref_ids: Sequence[int]) -> float:
    """Position-aligned accuracy over the reference positions.

    ``acc = |{i < len(ref) : i < len(pred) and pred[i] == ref[i]}| / len(ref)``.
    Missing predicted positions count as wrong; extra predicted tokens beyond
    the reference are ignored. NaN for an empty reference (undefined).
    """
    if len(ref_ids) == 0:
        return float("nan")
    hits = sum(1 for p, r in zip(pred_ids, ref_ids) if p == r)
    return hits / len(ref_ids)


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the strings agree after stripping surrounding whitespace, else 0.0."""
    return float(pred.strip() == ref.strip())


# The ICAE seed's trajectory metrics (icae/data/data_utils.py and
# icae/scripts/inference_trajectories.py of the seed), kept next to the strict ones above
# so that our numbers can be set beside the seed's published ones:
#
#   compute_exact_match(pred, ref) = int(normalize_text(pred) == normalize_text(ref)),
#   normalize_text(s): first line only (s.split("\n")[0]), a leading list number
#       "^\d+\.\s*" removed, lower-case, punctuation removed, articles a/an/the removed,
#       whitespace collapsed (applied to decoded, stripped strings);
#   compute_accuracy(ref, hyp) = mean(ref == hyp) elementwise; for autoregressive output the
#       shorter sequence is first padded with -1 to the longer one's length;
#   teacher-forced BLEU-1 / accuracy / exact match: the same functions applied to the
#       argmax next-token predictions at the labelled positions (the answer and its
#       end-of-turn suffix) against those labels.

_SEED_LIST_NUMBER = re.compile(r"^\d+\.\s*")


def seed_normalize_text(s: str) -> str:
    """The seed's ``normalize_text``: the first line only, a leading list number
    (``"3. "``) removed, then SQuAD-style lower-case / punctuation / articles / spaces."""
    text = s.split("\n")[0]
    text = _SEED_LIST_NUMBER.sub("", text)
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def seed_exact_match_first_line(pred: str, ref: str) -> float:
    """The seed's trajectory exact match: 1.0 when the normalised *first lines* agree
    (:func:`seed_normalize_text`), else 0.0. Much looser than :func:`exact_match`:
    everything after the first newline is ignored."""
    return float(seed_normalize_text(pred) == seed_normalize_text(ref))


def seed_token_accuracy(pred_ids: Sequence[int], ref_ids: Sequence[int]) -> float:
    """The seed's token accuracy: both sequences padded (with a value matching no token)
    to the longer one's length, then the fraction of equal positions::

        acc = |{i < max(len(pred), len(ref)) : pred[i] == ref[i]}| / max(len(pred), len(ref))

    Unlike :func:`token_accuracy` (over reference positions only), extra predicted
    tokens count as errors. NaN when both are empty (the seed divides by zero there)."""
    n = max(len(pred_ids), len(ref_ids))
    if n == 0:
        return float("nan")
    hits = sum(1 for p, r in zip(pred_ids, ref_ids) if p == r)
    return hits / n


def compression_stats(
    original_tokens: Sequence[int], compressed_tokens: Sequence[int]
) -> dict[str, object]:
    """Compression rates from per-turn token counts.

    For turns ``t`` with ``o_t`` original and ``c_t`` compressed tokens::

        per_turn_rate[t] = o_t / c_t
        overall_rate     = sum_t o_t / sum_t c_t   (token-weighted, not the mean of rates)

    A turn with ``c_t = 0`` has rate ``inf`` (``nan`` if also ``o_t = 0``), and
    likewise for the overall rate. Also returns ``total_original``,
    ``total_compressed`` and ``num_turns``.
    """
    if len(original_tokens) != len(compressed_tokens):
        raise ValueError(
            f"length mismatch: {len(original_tokens)} original vs {len(compressed_tokens)} compressed turns"
        )
    if any(x < 0 for x in original_tokens) or any(x < 0 for x in compressed_tokens):
        raise ValueError("token counts must be non-negative")

    def rate(o: float, c: float) -> float:
        if c == 0:
            return float("nan") if o == 0 else float("inf")
        return o / c

    total_o = sum(original_tokens)
    total_c = sum(compressed_tokens)
    return {
        "per_turn_rate": [rate(o, c) for o, c in zip(original_tokens, compressed_tokens)],
        "overall_rate": rate(total_o, total_c),
        "total_original": total_o,
        "total_compressed": total_c,
        "num_turns": len(original_tokens),
    }


# ---------------------------------------------------------------------------
# 5./6. Timing and aggregation
# ---------------------------------------------------------------------------


def throughput(num_tokens: int, seconds: float) -> float:
    """Tokens per second, ``num_tokens / seconds``; 0.0 when ``seconds == 0``.

    Zero elapsed time happens with coarse timers on tiny workloads; reporting
    0 rather than ``inf`` keeps tables and means finite. Negative inputs raise.
    """
    if num_tokens < 0 or seconds < 0:
        raise ValueError("num_tokens and seconds must be non-negative")
    if seconds == 0:
        return 0.0
    return num_tokens / seconds


def aggregate_mean(values: Iterable[float]) -> float:
    """Arithmetic mean ``sum(v) / n``; ``nan`` for an empty input.

    NaN (rather than 0 or an exception) marks "no data" without pretending to
    be a score, and callers can test it with ``math.isnan``. NaN entries are not
    skipped: they propagate, so an undefined per-item metric is never averaged
    away silently. Summation uses :func:`math.fsum` for an exact-rounded sum.
    """
    vals = [float(v) for v in values]
    if not vals:
        return float("nan")
    return math.fsum(vals) / len(vals)
