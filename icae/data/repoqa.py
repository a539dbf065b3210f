"""RepoQA "search needle function" tasks.

Two sources, one record format::

    {"id", "language", "repo", "context", "description", "needle_name", "needle_code",
     "position_ratio", "context_tokens", "instruction", "path", "needle_token_start",
     "needle_token_end", "origin"[, "repo_needles"]}

``context`` is code holding the needle function exactly once; ``needle_code`` (the expected
answer) is the needle's text as it stands in the context; ``context_tokens`` is the
context's actual length in tokens of the tokenizer used to build it (close to the requested
``data.repoqa.context_tokens``); ``position_ratio`` is the requested place of the needle in
the context (``needle_token_start / context_tokens`` is the achieved one). Release tasks
also carry ``repo_needles`` ({name: code} of every needle of the repository), which
RepoQA's pass@0.8 scores the answer against.

1. :func:`load_release` reads the official release file of RepoQA (``repoqa-2024-04-20.json``,
   optionally ``.gz`` / ``.xz``: ``{language: [{"repo", "content": {path: code},
   "dependency": {path: [paths]}, "needles": [{"name", "path", "start_byte", "end_byte",
   "description", ...}], ...}]}``) and builds each task the way RepoQA's
   ``search_needle_function.py`` does: files in topological order of ``dependency``, the
   i-th of a repository's n needles at ``position_ratio = (i + 0.5) / n``, prefix / suffix
   lines added around the needle (``# Path: ...`` headers, ``...`` where a file is cut)
   until the context holds ``context_tokens`` tokens. It also reads a task JSONL in the
   record format above (e.g. ``data/samples/repoqa/*.jsonl.gz``) as it is.

2. :func:`build_tasks_from_tree` makes RepoQA-style tasks from any folder of Python code
   (or an installed package, ``pkg:<module>``): functions with a docstring are needles,
   described by their docstring, placed at a chosen ``position_ratio`` in a context of
   ``context_tokens`` tokens drawn from neighbouring files of the same tree (sorted by path).

   Leakage of the description into the context is prevented as follows:

   - the needle's docstring is removed from the needle code placed in the context, and so
     from the expected answer (a needle must keep a body of >= 3 lines without it);
   - a function whose docstring mentions its own name is not a needle (the description
     would give the answer away), nor is a function whose name is not unique in the tree;
   - other functions that contain the description's text (its first line, whitespace
     normalised: copied docstrings, overloads, wrappers) are cut out of the context;
   - a task is dropped (and counted) when the description's first line still occurs in
     the context, e.g. in a module docstring or comment.

Everything is deterministic for a seed and a tokenizer.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from icae.data.io import DataError, SkipLog, bad_record, iter_jsonl, read_json
from icae.data.tokens import encode, encode_batch

log = logging.getLogger(__name__)

COMMENT_PREFIX = {"python": "#", "java": "//", "typescript": "//", "rust": "//", "cpp": "//",
                  "go": "//"}
RECORD_FIELDS = ("id", "language", "repo", "context", "description", "needle_name",
                 "needle_code", "position_ratio", "context_tokens")
DEFAULT_INSTRUCTION = (
    "Based on the function description and code context, please retrieve and repeat the "
    "exact described function from the code context in a code block wrapped by ```:")

MIN_BODY_LINES = 3
MIN_DOCSTRING_WORDS = 5
MAX_DESCRIPTION_CHARS = 1500
MAX_FILE_BYTES = 1_000_000


# ---------------------------------------------------------------------------------------
# Token accounting with a per-line cache (contexts are assembled line by line).


class LineTokens:
    """Token counts of ``line + "\\n"``, cached; counts exclude special tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, int] = {}

    def prime(self, lines: Iterable[str]) -> None:
        todo = list({ln for ln in lines if ln not in self.cache})
        for ln, ids in zip(todo, encode_batch(self.tokenizer, [ln + "\n" for ln in todo])):
            self.cache[ln] = len(ids)

    def __call__(self, line: str) -> int:
        n = self.cache.get(line)
        if n is None:
            n = self.cache[line] = len(encode(self.tokenizer, line + "\n"))
        return n


def _backward_lines(lines: list[str], count: LineTokens, max_tokens: int
                    ) -> tuple[str, int, bool]:
    text, ntokens = [], 0
    for line in reversed(lines):
        n = count(line)
        if ntokens + n > max_tokens:
            return "".join(reversed(text)), ntokens, True
        text.append(line + "\n")
        ntokens += n
    return "".join(reversed(text)), ntokens, False


def _forward_lines(lines: list[str], count: LineTokens, max_tokens: int
                   ) -> tuple[str, int, bool]:
    text, ntokens = [], 0
    for line in lines:
        n = count(line)
        if ntokens + n > max_tokens:
            text.append("...\n")
            return "".join(text), ntokens + count("..."), True
        text.append(line + "\n")
        ntokens += n
    return "".join(text), ntokens, False


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":  # text ending in a newline: no extra empty line
        lines.pop()
    return lines


def make_code_context(needle_code: str, needle_path: str, before: str, after: str,
                      files: Sequence[tuple[str, str]], needle_file_index: int,
                      position_ratio: float, context_tokens: int, language: str, tokenizer,
                      count: LineTokens | None = None) -> dict:
    """RepoQA's ``make_code_context``: ``before`` / ``after`` are the needle file's text
    around the needle; ``files`` are ``(path, content)`` in context order."""
    count = count or LineTokens(tokenizer)
    comment = COMMENT_PREFIX.get(language, "#")
    n_needle = len(encode(tokenizer, needle_code))
    prefix_size = int(context_tokens * position_ratio - n_needle / 2)
    suffix_size = context_tokens - n_needle - prefix_size

    prefix, used, cut = _backward_lines([f"{comment} Path: {needle_path}"]
                                        + _split_lines(before), count, prefix_size)
    prefix_size -= used
    index = needle_file_index - 1
    while not cut and prefix_size > 0 and index >= 0:
        path, content = files[index]
        text, used, cut = _forward_lines([f"{comment} Path: {path}"] + _split_lines(content),
                                         count, prefix_size)
        prefix = text + prefix
        prefix_size -= used
        index -= 1

    suffix, used, cut = _forward_lines(_split_lines(after), count, suffix_size)
    suffix_size -= used
    index = needle_file_index + 1
    while not cut and suffix_size > 0 and index < len(files):
        path, content = files[index]
        text, used, cut = _forward_lines([f"{comment} Path: {path}"] + _split_lines(content),
                                         count, suffix_size)
        suffix += text
        suffix_size -= used
        index += 1

    context = prefix + needle_code + suffix
    start = len(encode(tokenizer, prefix))
    end = start + n_needle
    return {"context": context, "needle_token_start": start, "needle_token_end": end,
            "context_tokens": len(encode(tokenizer, context))}


def topological_sort(graph: dict[str, list[str]]) -> list[str]:
    """RepoQA's order of files: dependencies first (iterative DFS, same result)."""
    order: list[str] = []
    visited: set[str] = set()
    for root in graph:
        if root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(graph.get(root, [])))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in visited:
                    visited.add(child)
                    stack.append((child, iter(graph.get(child, []))))
                    break
            else:
                order.append(node)
                stack.pop()
    return order


def _norm(text: str) -> str:
    return " ".join(text.split())


def description_key(description: str) -> str:
    """The text whose presence in a context counts as leakage: the description's first
    non-empty line, whitespace-normalised."""
    for line in description.splitlines():
        if line.strip():
            return _norm(line)
    return ""


# ---------------------------------------------------------------------------------------
# Release file / task JSONL.


def _check_record(row: dict) -> str | None:
    for name in RECORD_FIELDS:
        if name not in row:
            return f"missing field {name!r}"
    for name in ("context", "description", "needle_code", "needle_name"):
        if not isinstance(row[name], str) or not row[name].strip():
            return f"field {name!r} must be a non-empty string"
    if row["needle_code"] not in row["context"]:
        return "needle_code does not occur in context"
    return None


def load_task_jsonl(path: str | Path, *, languages: Sequence[str] | None = None,
                    skip_bad_lines: bool = False, skips: SkipLog | None = None) -> list[dict]:
    skips = skips if skips is not None else SkipLog()
    out = []
    for lineno, row in iter_jsonl(path, skip_bad_lines=skip_bad_lines, skips=skips):
        problem = _check_record(row)
        if problem:
            bad_record(problem, f"{path}:{lineno}", skip_bad_lines, skips, "bad_task")
            continue
        if languages and row["language"] not in languages:
            skips.add("language_not_selected", f"{path}:{lineno}")
            continue
        out.append(row)
    return out


def _needle_code(content: str, needle: dict) -> str:
    """The needle's text: RepoQA's offsets are tree-sitter byte offsets."""
    start, end = needle["start_byte"], needle["end_byte"]
    raw = content.encode("utf-8")
    try:
        code = raw[start:end].decode("utf-8")
    except UnicodeDecodeError:
        code = ""
    if needle["name"] not in code and needle["name"] in content[start:end]:
        code = content[start:end]  # offsets that count characters
    return code


def load_release(path: str | Path, tokenizer=None, *, context_tokens: int = 2048,
                 languages: Sequence[str] | None = None,
                 instruction: str = DEFAULT_INSTRUCTION, skip_bad_lines: bool = False,
                 skips: SkipLog | None = None) -> list[dict]:
    """Tasks from the official RepoQA release JSON (contexts built with ``tokenizer`` to
    ``context_tokens`` tokens), or from a task JSONL (``.jsonl`` / ``.jsonl.gz``)."""
    skips = skips if skips is not None else SkipLog()
    name = Path(path).name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")):
        return load_task_jsonl(path, languages=languages, skip_bad_lines=skip_bad_lines,
                               skips=skips)
    if tokenizer is None:
        raise ValueError("load_release: building contexts from the release needs a tokenizer")
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: not a RepoQA release file: expected a JSON object "
                        "{language: [repository, ...]} (repoqa-2024-04-20.json)")
    unknown = [lang for lang in (languages or []) if lang not in data]
    if unknown:
        raise DataError(f"{path}: no language(s) {unknown} in the release (has "
                        f"{sorted(data)}); check data.repoqa.languages")
    count = LineTokens(tokenizer)
    tasks: list[dict] = []
    for lang, repos in data.items():
        if languages and lang not in languages:
            continue
        for r, repo in enumerate(repos):
            where = f"{path}: {lang}[{r}]"
            if not isinstance(repo, dict):
                bad_record("repository entry is not an object", where, skip_bad_lines, skips,
                           "bad_repo")
                continue
            missing = [k for k in ("repo", "content", "dependency", "needles") if k not in repo]
            if missing:
                bad_record(f"repository {repo.get('repo', '?')!r} lacks {missing}", where,
                           skip_bad_lines, skips, "bad_repo")
                continue
            order = [p for p in topological_sort(repo["dependency"]) if p in repo["content"]]
            files = [(p, repo["content"][p]) for p in order]
            index_of = {p: i for i, p in enumerate(order)}
            needles = repo["needles"]
            # Every needle of the repository, for RepoQA's pass criterion (the answer must
            # be most similar to the target among them), whichever tasks are drawn later.
            repo_needles: dict[str, str] = {}
            for needle in needles:
                if (isinstance(needle, dict) and needle.get("path") in index_of
                        and all(k in needle for k in ("name", "start_byte", "end_byte"))):
                    code = _needle_code(files[index_of[needle["path"]]][1], needle)
                    if code.strip():
                        repo_needles.setdefault(str(needle["name"]), code)
            for i, needle in enumerate(needles):
                where_n = f"{where}.needles[{i}]"
                miss = [k for k in ("name", "path", "start_byte", "end_byte", "description")
                        if k not in needle]
                if miss:
                    bad_record(f"needle lacks {miss}", where_n, skip_bad_lines, skips,
                               "bad_needle")
                    continue
                if needle["path"] not in index_of:
                    bad_record(f"needle file {needle['path']!r} is not in the repository's "
                               "content/dependency", where_n, skip_bad_lines, skips,
                               "bad_needle")
                    continue
                fi = index_of[needle["path"]]
                content = files[fi][1]
                code = _needle_code(content, needle)
                if not code.strip() or not str(needle["description"]).strip():
                    bad_record("empty needle code or description", where_n, skip_bad_lines,
                               skips, "bad_needle")
                    continue
                raw = content.encode("utf-8")
                try:
                    before = raw[: needle["start_byte"]].decode("utf-8")
                    after = raw[needle["end_byte"]:].decode("utf-8")
                except UnicodeDecodeError:
                    before, after = content[: needle["start_byte"]], content[needle["end_byte"]:]
                ratio = (i + 0.5) / len(needles)
                ctx = make_code_context(code, needle["path"], before, after, files, fi, ratio,
                                        context_tokens, lang, tokenizer, count)
                tasks.append({
                    "id": f"{lang}::{repo['repo']}::{needle['name']}", "language": lang,
                    "repo": repo["repo"], "context": ctx["context"],
                    "description": str(needle["description"]).strip(),
                    "needle_name": needle["name"], "needle_code": code,
                    "position_ratio": ratio, "context_tokens": ctx["context_tokens"],
                    "instruction": instruction, "path": needle["path"],
                    "needle_token_start": ctx["needle_token_start"],
                    "needle_token_end": ctx["needle_token_end"], "origin": "release",
                    "repo_needles": repo_needles})
    if not tasks:
        raise DataError(f"{path}: no RepoQA tasks (languages={list(languages or [])}, "
                        f"skipped: {dict(skips.counts)})")
    return tasks


# ---------------------------------------------------------------------------------------
# Tasks from a source tree.


@dataclass
class TreeFunction:
    path: str            # relative to the tree root
    name: str
    qualname: str
    start: int           # char offset of the def line's start
    end: int             # char offset just after the last line (incl. its newline)
    doc_start: int       # char offsets of the docstring's lines (whole lines)
    doc_end: int
    docstring: str       # cleaned (inspect.cleandoc)
    body_lines: int      # lines left without the docstring, def line(s) excluded


@dataclass
class CodeTree:
    root: Path
    repo: str
    language: str
    files: list[tuple[str, str]] = field(default_factory=list)
    functions: list[TreeFunction] = field(default_factory=list)   # with a docstring
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # every function
    skips: SkipLog = field(default_factory=SkipLog)
    _normed: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    def normalized(self, span: tuple[str, int, int]) -> str:
        text = self._normed.get(span)
        if text is None:
            text = self._normed[span] = _norm(self.content(span[0])[span[1]:span[2]])
        return text

    def content(self, path: str) -> str:
        return self.files[self._index()[path]][1]

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_idx"):
            self._idx = {p: i for i, (p, _) in enumerate(self.files)}
        return self._idx


def resolve_source_dir(spec: str) -> tuple[Path, str]:
    """``(folder, repo name)`` for a folder path or ``pkg:<module>`` (an installed package;
    the name records its version)."""
    if spec.startswith("pkg:"):
        import importlib.metadata
        import importlib.util

        module = spec[4:]
        found = importlib.util.find_spec(module)
        if found is None:
            raise DataError(f"data.repoqa.source_dirs: no installed package {module!r}")
        if found.submodule_search_locations:
            root = Path(list(found.submodule_search_locations)[0])
        elif found.origin:
            root = Path(found.origin).parent
        else:
            raise DataError(f"data.repoqa.source_dirs: cannot locate the files of {module!r}")
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return root, f"{module}=={version}" if version else module
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"data.repoqa.source_dirs: {spec} is not a folder")
    return root, root.resolve().name


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for m in re.finditer("\n", text):
        starts.append(m.end())
    return starts


def scan_tree(spec: str | Path, language: str = "python") -> CodeTree:
    """Parse every ``.py`` file under a folder (sorted; hidden folders, ``__pycache__`` and
    files over 1 MB left out) and list its functions that have a docstring."""
    if language != "python":
        raise DataError(f"data.repoqa.languages: building tasks from source trees supports "
                        f"python only, got {language!r}")
    root, repo = resolve_source_dir(str(spec))
    tree = CodeTree(root=root, repo=repo, language=language)
    paths = sorted(p for p in root.rglob("*.py") if p.is_file()
                   and not any(part.startswith(".") or part == "__pycache__"
                               for part in p.relative_to(root).parts))
    for p in paths:
        rel = p.relative_to(root).as_posix()
        if p.stat().st_size > MAX_FILE_BYTES:
            tree.skips.add("file_too_large", rel)
            continue
        try:
            text = p.read_text(encoding="utf-8")
            module = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
            tree.skips.add("unparsable_file", f"{rel}: {type(exc).__name__}")
            continue
        text = text.replace("\r\n", "\n")
        tree.files.append((rel, text))
        starts = _line_starts(text)
        lines = text.split("\n")

        def offset(line: int) -> int:  # start of 1-based line; len(text) past the end
            return starts[line - 1] if line - 1 < len(starts) else len(text)

        def visit(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        tree.spans.append((rel, offset(child.lineno),
                                           offset(child.end_lineno + 1)))
                        _add_function(tree, rel, child, qual, offset, lines)
                    visit(child, qual + ".")
                else:
                    visit(child, prefix)

        visit(module, "")
    return tree


def _add_function(tree: CodeTree, rel: str, node, qual: str, offset, lines: list[str]
                  ) -> None:
    doc = ast.get_docstring(node, clean=True)
    body = node.body
    if not doc or not isinstance(body[0], ast.Expr):
        return
    first = body[0]
    if (first.lineno <= node.lineno or len(body) < 2 or body[1].lineno <= first.end_lineno):
        return  # docstring on the def line, or nothing but the docstring
    body_lines = node.end_lineno - first.end_lineno
    doc_last = first.end_lineno
    while doc_last + 1 < body[1].lineno and not lines[doc_last].strip():
        doc_last += 1  # blank lines after the docstring go with it
    tree.functions.append(TreeFunction(
        path=rel, name=node.name, qualname=qual, start=offset(node.lineno),
        end=offset(node.end_lineno + 1), doc_start=offset(first.lineno),
        doc_end=offset(doc_last + 1), docstring=doc, body_lines=body_lines))


def _description(doc: str) -> str:
    doc = re.sub(r"(?m)^[ \t]*:meta [\w-]+:.*\n?", "", doc).strip()  # Sphinx-only markup
    if len(doc) <= MAX_DESCRIPTION_CHARS:
        return doc
    cut = doc.rfind("\n\n", 0, MAX_DESCRIPTION_CHARS)
    return doc[: cut if cut > 0 else MAX_DESCRIPTION_CHARS].rstrip()


def needle_candidates(tree: CodeTree, skips: SkipLog | None = None) -> list[TreeFunction]:
    """Functions that may serve as needles (see the module docstring for the rules)."""
    skips = skips if skips is not None else SkipLog()
    from collections import Counter

    names = Counter(f.name for f in tree.functions)
    out = []
    for f in tree.functions:
        where = f"{tree.repo}:{f.path}:{f.qualname}"
        if names[f.name] > 1:
            skips.add("name_not_unique", where)
        elif f.body_lines < MIN_BODY_LINES:
            skips.add("body_too_short", where)
        elif len(_description(f.docstring).split()) < MIN_DOCSTRING_WORDS:
            skips.add("docstring_too_short", where)
        elif re.search(rf"(?<![A-Za-z0-9_]){re.escape(f.name)}(?![A-Za-z0-9_])",
                       _description(f.docstring)):
            skips.add("docstring_names_function", where)
        else:
            out.append(f)
    return out


def _remove_spans(text: str, spans: Iterable[tuple[int, int]]) -> str:
    parts, pos = [], 0
    for s, e in sorted(spans):
        if s >= pos:  # spans nested in one already removed are skipped
            parts.append(text[pos:s])
            pos = e
    parts.append(text[pos:])
    return "".join(parts)


def _tree_task(tree: CodeTree, f: TreeFunction, ratio: float, context_tokens: int, tokenizer,
               count: LineTokens, instruction: str, skips: SkipLog) -> dict | None:
    content = tree.content(f.path)
    needle_code = content[f.start:f.doc_start] + content[f.doc_end:f.end]
    description = _description(f.docstring)
    key = description_key(description)
    where = f"{tree.repo}:{f.path}:{f.qualname}"
    n_needle = len(encode(tokenizer, needle_code))
    if n_needle > context_tokens // 2:
        skips.add("needle_too_long", where)
        return None
    # Other functions containing the description's text are cut out of the context.
    cut: dict[str, list[tuple[int, int]]] = {}
    for span in tree.spans:
        if span != (f.path, f.start, f.end) and key in tree.normalized(span):
            if span[0] == f.path and span[1] <= f.start and span[2] >= f.end:
                continue  # a function enclosing the needle stays (it holds the needle)
            cut.setdefault(span[0], []).append((span[1], span[2]))
    cut.setdefault(f.path, []).append((f.start, f.end))  # the needle itself
    files = [(path, _remove_spans(text, cut.get(path, ()))) for path, text in tree.files]
    index = [p for p, _ in tree.files].index(f.path)
    # The needle file's text before / after the needle, other cut functions removed.
    before = _remove_spans(content[:f.start], [(s, e) for s, e in cut[f.path] if e <= f.start])
    after = _remove_spans(content[f.end:], [(s - f.end, e - f.end) for s, e in cut[f.path]
                                            if s >= f.end])
    ctx = make_code_context(needle_code, f.path, before, after, files, index, ratio,
                            context_tokens, tree.language, tokenizer, count)
    # Lines are counted one by one, so the joined context is only roughly context_tokens
    # long: search for the budget whose context comes closest without exceeding it.
    def build(size: int) -> dict:
        return make_code_context(needle_code, f.path, before, after, files, index, ratio, size,
                                 tree.language, tokenizer, count)

    best = ctx if ctx["context_tokens"] <= context_tokens else None
    lo, hi = (context_tokens, None) if best else (None, context_tokens)
    last, last_size = ctx, context_tokens
    for _ in range(8):
        if best is not None and best["context_tokens"] >= 0.98 * context_tokens:
            break
        if lo is not None and hi is not None:
            size = (lo + hi) // 2
            if size in (lo, hi):
                break
        else:
            size = int(last_size * context_tokens / max(1, last["context_tokens"]))
            if size == last_size:
                size += 1 if last["context_tokens"] < context_tokens else -1
        # Only correct the per-line estimate; a needle near either end of the tree keeps
        # a shorter context rather than drifting away from its position ratio.
        size = min(max(size, int(0.8 * context_tokens)), int(1.25 * context_tokens))
        if size <= n_needle or size == last_size:
            break
        cand = build(size)
        if cand["context_tokens"] <= context_tokens:
            lo = size if lo is None else max(lo, size)
            if best is None or cand["context_tokens"] > best["context_tokens"]:
                best = cand
        else:
            hi = size if hi is None else min(hi, size)
        last, last_size = cand, size
    if best is None:
        skips.add("context_over_budget", where)
        return None
    ctx = best
    if key and key in _norm(ctx["context"]):
        skips.add("description_in_context", where)
        return None
    if ctx["context"].count(needle_code) != 1:
        skips.add("needle_not_unique_in_context", where)
        return None
    return {"id": f"{tree.language}::{tree.repo}::{f.path}::{f.qualname}",
            "language": tree.language, "repo": tree.repo, "context": ctx["context"],
            "description": description, "needle_name": f.name, "needle_code": needle_code,
            "position_ratio": ratio, "context_tokens": ctx["context_tokens"],
            "instruction": instruction, "path": f.path,
            "needle_token_start": ctx["needle_token_start"],
            "needle_token_end": ctx["needle_token_end"], "origin": "tree"}


def build_tasks_from_tree(roots: str | Path | Sequence[str | Path], tokenizer, *,
                          num_tasks: int, context_tokens: int = 2048,
                          position_ratios: Sequence[float] = (0.1, 0.5, 0.9), seed: int = 0,
                          language: str = "python", instruction: str = DEFAULT_INSTRUCTION,
                          exclude_ids: Iterable[str] = (), skips: SkipLog | None = None,
                          trees: list[CodeTree] | None = None) -> list[dict]:
    """``num_tasks`` RepoQA-style tasks from one or more code folders (``pkg:<module>`` for
    an installed package). Needles are drawn with ``seed`` from all folders together; the
    k-th task gets ``position_ratios[k % len(position_ratios)]``. ``exclude_ids`` keeps
    needles of another split out. Fewer tasks come back when there are not enough needles
    (a warning says so)."""
    skips = skips if skips is not None else SkipLog()
    if isinstance(roots, (str, Path)):
        roots = [roots]
    if trees is None:
        trees = [scan_tree(r, language) for r in roots]
    exclude = set(exclude_ids)
    pool = []
    for tree in trees:
        skips.merge(tree.skips)
        for f in needle_candidates(tree, skips):
            pool.append((tree, f))
    # Deterministic order independent of dict/set ordering, then a seeded shuffle.
    pool.sort(key=lambda tf: (tf[0].repo, tf[1].path, tf[1].start))
    random.Random(seed).shuffle(pool)
    count = LineTokens(tokenizer)
    tasks: list[dict] = []
    for tree, f in pool:
        if len(tasks) >= num_tasks:
            break
        task_id = f"{tree.language}::{tree.repo}::{f.path}::{f.qualname}"
        if task_id in exclude:
            continue
        ratio = float(position_ratios[len(tasks) % len(position_ratios)])
        task = _tree_task(tree, f, ratio, context_tokens, tokenizer, count, instruction, skips)
        if task is not None:
            tasks.append(task)
    if len(tasks) < num_tasks:
        log.warning("repoqa: only %d of %d requested tasks could be built from %s "
                    "(%d candidate needles)", len(tasks), num_tasks,
                    ", ".join(t.repo for t in trees), len(pool))
    return tasks


def fingerprint(tasks: list[dict]) -> str:
    h = hashlib.sha256()
    for t in tasks:
        h.update(t["id"].encode())
        h.update(t["context"].encode())
    return h.hexdigest()[:16]
