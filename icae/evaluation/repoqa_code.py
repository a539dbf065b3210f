"""Reading code out of model answers, as RepoQA does it: fenced code blocks, the first
function definition of a block, and comment removal (RepoQA's ``sanitize_output`` and
``remove_comments`` of evalplus/repoqa ``repoqa/compute_score.py``).

RepoQA uses tree-sitter for this; tree-sitter is not a dependency here: function extraction
and comment removal are re-implemented with Python's :mod:`ast` and small scanners; the
docstrings say where they can differ. The scores built on top are in
:mod:`icae.evaluation.metrics`.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable

__all__ = [
    "check_language",
    "extract_code_blocks",
    "extract_first_function",
    "sanitize_repoqa_output",
    "remove_comments",
    "remove_comments_and_blank_lines",
]

_C_LIKE = frozenset({"java", "cpp", "c", "rust", "go", "typescript", "javascript"})

# Same expression as RepoQA's sanitize_output: a fence at line start, an
# optional language word, the body, and a closing fence at line start.
_CODE_BLOCK = re.compile(r"^```(?:\w+)?\s*\n(.*?)(?=^```)```", re.DOTALL | re.MULTILINE)


def check_language(language: str) -> str:
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
    lang = check_language(language)
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
    lang = check_language(language)
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
    lang = check_language(language)
    stripped = model_output.strip()
    blocks = _CODE_BLOCK.findall(stripped)
    if not blocks:
        return stripped
    for block in blocks:
        func = extract_first_function(block, lang)
        if func is not None:
            return func
    return blocks[0]
