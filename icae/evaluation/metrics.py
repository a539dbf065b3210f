"""Pure metric functions for ICAE evaluation (no model imports, no file I/O).

Contents
--------
* BLEU-1 as the ICAE seed computes it (NLTK ``sentence_bleu`` over word tokens),
  with an offline replacement for ``nltk.word_tokenize`` (see :func:`word_tokenize_offline`).
* SQuAD v1.1 exact match / F1, a line-by-line port of the official ``evaluate-v1.1.py``.
* RepoQA "Search Needle Function" scoring, mirroring ``repoqa/compute_score.py`` and
  ``repoqa/metric.py`` of evalplus/repoqa (see :func:`compute_function_similarity`).
* Trajectory metrics (token accuracy, exact match, compression statistics),
  throughput and a documented mean.

NLTK is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import ast
import math
import re
import string
import warnings
from collections import Counter
from functools import lru_cache
from typing import Callable, Iterable, Literal, Mapping, Sequence

__all__ = [
    "word_tokenize_offline",
    "sentence_split_offline",
    "bleu1",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_corpus_scores",
    "extract_code_blocks",
    "extract_first_function",
    "sanitize_repoqa_output",
    "remove_comments",
    "remove_comments_and_blank_lines",
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
    from nltk.translate.bleu_score import sentence_bleu

    tok = tokenize or word_tokenize_offline
    ref_tokens = tok(reference)
    hyp_tokens = tok(hypothesis)
    if not ref_tokens or not hyp_tokens:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([ref_tokens], hyp_tokens, weights=(1, 0, 0, 0)))


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
# tree-sitter is not a dependency here: function extraction and comment removal
# are re-implemented with Python's ``ast`` and small scanners; see the
# docstrings for where they can differ.


_C_LIKE = frozenset({"java", "cpp", "c", "rust", "go", "typescript", "javascript"})

# Same expression as RepoQA's sanitize_output: a fence at line start, an
# optional language word, the body, and a closing fence at line start.
_CODE_BLOCK = re.compile(r"^```(?:\w+)?\s*\n(.*?)(?=^```)```", re.DOTALL | re.MULTILINE)


def _check_language(language: str) -> str:
    lang = language.lower()
    if lang in ("c++", "cxx"):
        lang = "cpp"
    if lang in ("ts", "tsx"):
        lang = "typescript"
    if lang in ("js",):
        lang = "javascript"
    if lang != "python" and lang not in _C_LIKE:
        raise ValueError(f"unsupported language {language!r}")
    return lang


def extract_code_blocks(text: str) -> list[str]:
    """Bodies of the fenced code blocks of ``text``; ``[text.strip()]`` if there are none.

    Uses RepoQA's pattern ``^```(?:\\w+)?\\s*\\n(.*?)(?=^```)```\\`` (DOTALL,
    MULTILINE) on the stripped text, so fences must start a line.
    """
    stripped = text.strip()
    blocks = _CODE_BLOCK.findall(stripped)
    return blocks if blocks else [stripped]


# --- small lexers: skip string literals so that "#" or "//" inside them is kept


def _skip_quoted(code: str, i: int, quote: str, escapes: bool = True, multiline: bool = False) -> int:
    """Index just past the literal opened at ``code[i]``; stops at a newline unless ``multiline``."""
    n = len(code)
    j = i + len(quote)
    while j < n:
        ch = code[j]
        if escapes and ch == "\\":
            j += 2
            continue
        if code.startswith(quote, j):
            return j + len(quote)
        if ch == "\n" and not multiline:
            # Unterminated single-line literal: model output may be truncated.
            return j
        j += 1
    return n


# A char literal such as 'a', '\n', '\'', '\u0041'. Anything else that starts
# with a quote (Rust lifetimes 'a, C++14 digit separators) is plain text.
_CHAR_LITERAL = re.compile(r"'(?:\\.[^'\\\n]{0,8}|[^'\\\n])'")


def _python_comment_spans(code: str) -> list[tuple[int, int]]:
    spans = []
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        if ch == "#":
            j = code.find("\n", i)
            j = n if j < 0 else j
            spans.append((i, j))
            i = j
        elif ch in "'\"":
            triple = ch * 3
            if code.startswith(triple, i):
                i = _skip_quoted(code, i, triple, multiline=True)
            else:
                i = _skip_quoted(code, i, ch)
        else:
            i += 1
    return spans


def _c_like_comment_spans(code: str, language: str) -> list[tuple[int, int]]:
    spans = []
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            j = n if j < 0 else j
            spans.append((i, j))
            i = j
        elif code.startswith("/*", i):
            j = code.find("*/", i + 2)
            j = n if j < 0 else j + 2
            spans.append((i, j))
            i = j
        elif ch == '"':
            i = _skip_quoted(code, i, '"')
        elif ch == "`" and language in ("go", "typescript", "javascript"):
            # Go raw strings have no escapes; JS/TS template literals do.
            i = _skip_quoted(code, i, "`", escapes=language != "go", multiline=True)
        elif ch == "'":
            m = _CHAR_LITERAL.match(code, i)
            i = m.end() if m else i + 1
        else:
            i += 1
    return spans


def _line_offsets(code: str) -> list[int]:
    # ast numbers lines by "\n" ("\r\n" keeps its "\r" on the line, harmless).
    offsets = [0]
    for m in re.finditer("\n", code):
        offsets.append(m.end())
    return offsets


def _ast_char_offset(code: str, line_offsets: list[int], lineno: int, col_byte: int) -> int:
    """Convert ast's (1-based line, UTF-8 byte column) into a str index."""
    start = line_offsets[lineno - 1]
    end = line_offsets[lineno] if lineno < len(line_offsets) else len(code)
    line_bytes = code[start:end].encode("utf-8")
    return start + len(line_bytes[:col_byte].decode("utf-8", errors="ignore"))


def _python_docstring_spans(code: str) -> list[tuple[int, int]]:
    """Spans of string-expression statements inside blocks.

    Mirrors RepoQA's tree-sitter query ``(block (expression_statement (string)))``:
    docstrings of functions/classes and any bare string statement in a nested
    body; module-level strings are not in a ``block`` and are kept.
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    offsets = _line_offsets(code)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module):
            continue
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):
                continue
            for stmt in stmts:
                if not isinstance(stmt, ast.Expr):
                    continue
                value = stmt.value
                is_string = isinstance(value, ast.JoinedStr) or (
                    isinstance(value, ast.Constant) and isinstance(value.value, (str, bytes))
                )
                if is_string:
                    spans.append(
                        (
                            _ast_char_offset(code, offsets, value.lineno, value.col_offset),
                            _ast_char_offset(code, offsets, value.end_lineno, value.end_col_offset),
                        )
                    )
    return spans


def _cut_spans(code: str, spans: Iterable[tuple[int, int]]) -> str:
    # Removing the bytes outright (no replacement space) is what RepoQA does.
    pieces = []
    pos = 0
    for start, end in sorted(spans):
        if start < pos:  # nested/overlapping span already removed
            start = pos
        if end <= start:
            continue
        pieces.append(code[pos:start])
        pos = end
    pieces.append(code[pos:])
    return "".join(pieces)


def remove_comments(code: str, language: str) -> str:
    """Delete comments the way RepoQA's ``remove_comments`` (tree-sitter) does.

    * Python: ``#`` comments and string statements inside blocks (docstrings).
      Docstrings are found with :mod:`ast`, so code that does not parse keeps
      them (tree-sitter would still find them).
    * C-like (java, cpp, c, rust, go, typescript, javascript): ``//`` and
      ``/* */`` comments. Not handled: nested Rust block comments, Rust/C++ raw
      strings containing comment markers.

    String literals are skipped, so ``"#"`` or ``"//"`` inside them stays. Comment
    text is cut out without a replacement, as RepoQA cuts the comment node's
    bytes; the newline after a line comment stays.
    """
    lang = _check_language(language)
    if lang == "python":
        code = _cut_spans(code, _python_docstring_spans(code))
        return _cut_spans(code, _python_comment_spans(code))
    return _cut_spans(code, _c_like_comment_spans(code, lang))


def remove_comments_and_blank_lines(code: str, language: str) -> str:
    """:func:`remove_comments`, then drop lines that are empty or whitespace only.

    Blank lines never change :func:`compute_function_similarity` (tokens are
    split on any whitespace); dropping them only makes the code readable.
    """
    stripped = remove_comments(code, language)
    return "\n".join(line for line in stripped.split("\n") if line.strip())


# --- function extraction (stand-in for RepoQA's tree-sitter FUNCTION_QUERY)

_CONTROL_WORDS = frozenset(
    "if else for while do switch case catch return new throw try sizeof typeof "
    "delete await yield synchronized using namespace class struct enum union".split()
)

# ``start`` marks where the tree-sitter function node begins (e.g. Rust's
# function_item includes ``pub``; TypeScript's function_declaration does not
# include ``export``). Java/C++ patterns are checked against _CONTROL_WORDS.
_FUNCTION_HEADERS: dict[str, re.Pattern[str]] = {
    "rust": re.compile(
        r"^[ \t]*(?P<start>(?:pub(?:\([^)\n]*\))?[ \t]+)?"
        r"(?:(?:const|async|unsafe|default|extern(?:[ \t]+\"[^\"\n]*\")?)[ \t]+)*fn[ \t]+\w+)",
        re.MULTILINE,
    ),
    "go": re.compile(r"^[ \t]*(?P<start>func[ \t]*(?:\([^)\n]*\)[ \t]*)?\w+[ \t]*[\[(])", re.MULTILINE),
    "typescript": re.compile(
        r"^[ \t]*(?:export[ \t]+(?:default[ \t]+)?)?(?:declare[ \t]+)?"
        r"(?P<start>(?:async[ \t]+)?function\b[ \t]*\*?[ \t]*\w+)",
        re.MULTILINE,
    ),
    "java": re.compile(
        r"^[ \t]*(?P<start>(?:@\w+(?:\([^)\n]*\))?\s+)*"
        r"(?:(?:public|protected|private|static|final|abstract|synchronized|native|default|strictfp)\s+)*"
        r"(?:<[^>\n]*>\s+)?(?P<type>[\w$.]+(?:<[^(\n]*>)?(?:\[\])*)\s+(?P<name>[\w$]+)\s*\()",
        re.MULTILINE,
    ),
    "cpp": re.compile(
        r"^[ \t]*(?P<start>(?:(?P<type>[\w:<>,*&~\[\] \t]*?[\w>*&])[ \t*&]+)?(?P<name>~?[\w:]+)[ \t]*\()",
        re.MULTILINE,
    ),
}
_FUNCTION_HEADERS["c"] = _FUNCTION_HEADERS["cpp"]
_FUNCTION_HEADERS["javascript"] = _FUNCTION_HEADERS["typescript"]


def _find_body_end(code: str, start: int, language: str) -> int | None:
    """End index (exclusive) of the ``{...}`` body that follows ``start``, or None.

    A ``;`` before the opening brace (at parenthesis depth 0) means a
    declaration without body, which tree-sitter does not report as a function.
    """
    i, n = start, len(code)
    paren = 0
    brace = 0
    while i < n:
        ch = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
            continue
        if code.startswith("/*", i):
            j = code.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if ch == '"':
            i = _skip_quoted(code, i, '"')
            continue
        if ch == "`" and language in ("go", "typescript", "javascript"):
            i = _skip_quoted(code, i, "`", escapes=language != "go", multiline=True)
            continue
        if ch == "'":
            m = _CHAR_LITERAL.match(code, i)
            if m:
                i = m.end()
                continue
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren -= 1
        elif ch == ";" and paren <= 0 and brace == 0:
            return None
        elif ch == "{" and (brace > 0 or paren <= 0):
            # Before the body only a top-level "{" opens it (not a default
            # argument's braces); inside the body every brace counts.
            brace += 1
        elif ch == "}" and brace > 0:
            brace -= 1
            if brace == 0:
                return i + 1
        i += 1
    return None


def _extract_python_function(code: str) -> str | None:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return _extract_python_function_by_indent(code)
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not funcs:
        return None
    # tree-sitter reports captures in document order; decorators are outside
    # function_definition, and ast's lineno/col_offset also point at "def"/"async".
    first = min(funcs, key=lambda f: (f.lineno, f.col_offset))
    offsets = _line_offsets(code)
    start = _ast_char_offset(code, offsets, first.lineno, first.col_offset)
    end = _ast_char_offset(code, offsets, first.end_lineno, first.end_col_offset)
    return code[start:end]


_PY_DEF = re.compile(r"^([ \t]*)((?:async[ \t]+)?def[ \t]+\w+)", re.MULTILINE)


def _indent_width(line: str) -> int:
    expanded = line.expandtabs()
    return len(expanded) - len(expanded.lstrip())


def _extract_python_function_by_indent(code: str) -> str | None:
    """Fallback for code that does not parse: the def line plus deeper-indented lines."""
    m = _PY_DEF.search(code)
    if m is None:
        return None
    indent = _indent_width(m.group(1))
    lines = code[m.start(2):].split("\n")
    kept = [lines[0]]
    in_header = not lines[0].split("#", 1)[0].rstrip().endswith(":")
    for line in lines[1:]:
        if in_header:
            # Multi-line signatures may put ")" back at the def's indentation.
            kept.append(line)
            in_header = not line.split("#", 1)[0].rstrip().endswith(":")
            continue
        if line.strip() and _indent_width(line) <= indent:
            break
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept).rstrip()


def extract_first_function(code: str, language: str) -> str | None:
    """Text of the first function definition in ``code``, or None if there is none.

    Stand-in for RepoQA's tree-sitter ``FUNCTION_QUERY`` capture:

    * Python: first ``FunctionDef``/``AsyncFunctionDef`` by position (via
      :mod:`ast`; an indentation heuristic if the code does not parse), from
      ``def``/``async`` to the end of its last statement, decorators excluded.
    * C-like: the first header matching a per-language pattern (``fn`` items for
      Rust, ``func`` for Go, ``function`` declarations for TypeScript/JavaScript,
      method declarations with modifiers/annotations for Java, function
      definitions for C/C++) that is followed by a ``{...}`` body, up to the
      matching ``}``. Arrow functions, methods of TS classes and other forms
      that RepoQA's queries also skip are not matched.
    """
    lang = _check_language(language)
    if lang == "python":
        return _extract_python_function(code)
    pattern = _FUNCTION_HEADERS[lang]
    for m in pattern.finditer(code):
        groups = m.groupdict()
        if groups.get("name") and groups["name"].split("::")[-1].lstrip("~") in _CONTROL_WORDS:
            continue
        if groups.get("type") and groups["type"].split()[0] in _CONTROL_WORDS:
            continue
        end = _find_body_end(code, m.end(), lang)
        if end is not None:
            return code[m.start("start"):end]
    return None


def sanitize_repoqa_output(model_output: str, language: str) -> str:
    """The candidate function RepoQA scores (``sanitize_output``).

    The first function found in the first fenced block that has one; failing
    that the first block; with no fenced block, the whole stripped output.
    """
    lang = _check_language(language)
    stripped = model_output.strip()
    blocks = _CODE_BLOCK.findall(stripped)
    if not blocks:
        return stripped
    for block in blocks:
        func = extract_first_function(block, lang)
        if func is not None:
            return func
    return blocks[0]


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
    lang = _check_language(language)
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
    lang = _check_language(language)
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
