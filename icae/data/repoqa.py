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

2. :func:`icae.data.repoqa_tree.build_tasks_from_tree` makes RepoQA-style tasks from any
   folder of Python code.

:func:`build_repoqa_sets` puts the configured sources together into the train and eval
splits. Everything is deterministic for a seed and a tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from icae.data.io import DataError, SkipLog, bad_record, iter_jsonl, read_json, seeded_subset
from icae.data.tokens import encode

if TYPE_CHECKING:
    from icae.config import RepoQADataConfig

COMMENT_PREFIX = {"python": "#", "java": "//", "typescript": "//", "rust": "//", "cpp": "//",
                  "go": "//"}
RECORD_FIELDS = ("id", "language", "repo", "context", "description", "needle_name",
                 "needle_code", "position_ratio", "context_tokens")
DEFAULT_INSTRUCTION = (
    "Based on the function description and code context, please retrieve and repeat the "
    "exact described function from the code context in a code block wrapped by ```:")


# ---------------------------------------------------------------------------------------
# Token accounting with a per-line cache (contexts are assembled line by line).


class LineTokens:
    """Token counts of ``line + "\\n"``, cached; counts exclude special tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, int] = {}

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


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def description_key(description: str) -> str:
    """The text whose presence in a context counts as leakage: the description's first
    non-empty line, whitespace-normalised."""
    for line in description.splitlines():
        if line.strip():
            return normalize_space(line)
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
# The train and eval splits.


def build_repoqa_sets(r: "RepoQADataConfig", tokenizer, seed: int, *,
                      skip_bad_lines: bool = False) -> tuple[list[dict], list[dict], dict]:
    """``(train, eval, summary)`` of ``data.repoqa`` (``r``). Eval: the release file's tasks
    (``num_eval`` of them drawn with the seed, or all when there are fewer). Train:
    ``train_tasks_file`` plus, up to ``num_train`` in all, tasks built from
    ``source_dirs``. Without a release file the eval tasks are built from ``source_dirs``
    too, from needles that the train tasks do not use."""
    from icae.data.repoqa_tree import build_tasks_from_tree, scan_tree

    skips = {"train": SkipLog(), "eval": SkipLog()}
    summary: dict = {}
    eval_tasks: list[dict] = []
    train_tasks: list[dict] = []

    if r.release_file:
        released = load_release(r.release_file, tokenizer, context_tokens=r.context_tokens,
                                languages=r.languages, instruction=r.instruction,
                                skip_bad_lines=skip_bad_lines, skips=skips["eval"])
        eval_tasks = seeded_subset(released, r.num_eval, seed + 1)
        summary["eval_source"] = str(r.release_file)
    if r.train_tasks_file:
        given = load_task_jsonl(r.train_tasks_file, languages=r.languages,
                                skip_bad_lines=skip_bad_lines, skips=skips["train"])
        train_tasks = seeded_subset(given, r.num_train, seed)
        summary["train_source"] = str(r.train_tasks_file)
    if r.source_dirs:
        if "python" not in r.languages:
            raise DataError("data.repoqa.source_dirs: tasks from source trees are python only; "
                            "add python to data.repoqa.languages")
        trees = [scan_tree(d) for d in r.source_dirs]
        common = dict(context_tokens=r.context_tokens, position_ratios=r.position_ratios,
                      instruction=r.instruction, trees=trees)
        if not r.release_file:
            eval_tasks = build_tasks_from_tree(r.source_dirs, tokenizer, num_tasks=r.num_eval,
                                               seed=seed + 1, skips=skips["eval"], **common)
            summary["eval_source"] = f"source_dirs {r.source_dirs}"
        need = max(0, r.num_train - len(train_tasks))
        if need:
            train_tasks += build_tasks_from_tree(
                r.source_dirs, tokenizer, num_tasks=need, seed=seed,
                exclude_ids=[t["id"] for t in eval_tasks], skips=skips["train"], **common)
            summary["train_source"] = ", ".join(
                x for x in (summary.get("train_source"), f"source_dirs {r.source_dirs}") if x)
    overlap = {t["id"] for t in train_tasks} & {t["id"] for t in eval_tasks}
    if overlap:
        raise DataError(f"data.repoqa: {len(overlap)} tasks are in both train and eval (e.g. "
                        f"{sorted(overlap)[0]}); use different sources")
    def why(split: str) -> str:
        counts = skips[split].counts
        return (f"skipped: {dict(sorted(counts.items()))}"
                + ("; a needle may take at most half of data.repoqa.context_tokens="
                   f"{r.context_tokens}: raise it" if counts.get("needle_too_long") else ""))

    if (r.release_file or r.source_dirs) and r.num_eval and not eval_tasks:
        raise DataError(f"data.repoqa: no eval tasks could be built ({why('eval')})")
    if (r.train_tasks_file or r.source_dirs) and r.num_train and not train_tasks:
        raise DataError(f"data.repoqa: no train tasks could be built ({why('train')})")

    def stats(tasks):
        return {"tasks": len(tasks),
                "languages": sorted({t["language"] for t in tasks}),
                "repos": len({t["repo"] for t in tasks}),
                "mean_context_tokens": (sum(t["context_tokens"] for t in tasks)
                                        / max(1, len(tasks)))}

    summary.update({"train": stats(train_tasks), "eval": stats(eval_tasks),
                    "skipped": {k: v.as_dict() for k, v in skips.items()}})
    return train_tasks, eval_tasks, summary
