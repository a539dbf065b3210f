"""RepoQA-style tasks built from a source tree (the record format is :mod:`icae.data.repoqa`'s).

:func:`build_tasks_from_tree` makes RepoQA-style tasks from any folder of Python code
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
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from icae.data.io import DataError, SkipLog
from icae.data.repoqa import (DEFAULT_INSTRUCTION, LineTokens, description_key,
                              make_code_context, normalize_space)
from icae.data.tokens import encode

log = logging.getLogger(__name__)

MIN_BODY_LINES = 3
MIN_DOCSTRING_WORDS = 5
MAX_DESCRIPTION_CHARS = 1500
MAX_FILE_BYTES = 1_000_000


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
            text = self._normed[span] = normalize_space(self.content(span[0])[span[1]:span[2]])
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
    if key and key in normalize_space(ctx["context"]):
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

