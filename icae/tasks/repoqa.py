"""RepoQA "search needle function" (task and data set ``repoqa``).

Data: :func:`icae.data.repoqa.build_repoqa_sets` (the official release, a task JSONL, or
tasks built from source trees). Training and evaluation share
:func:`icae.models.task_prompts.repoqa_prompt`; the training target is the needle in a
fenced code block (:func:`~icae.models.task_prompts.repoqa_answer`).

Scored as evalplus/repoqa's ``compute_score`` does: ``pass@0.8`` requires the needle most
similar to the answer, among the repository's needles, to be the target and its
similarity to be >= 0.8. The repository's needles are a record's ``repo_needles``
({name: code}) when present, else the needles of all tasks of the same (language, repo) in
the eval file (all of its rows, whatever ``evaluation.num_samples``).
``similarity_pass@0.8`` is the looser ``similarity to the target >= 0.8`` without the
best-match condition. Means are also broken down by needle position and, with several,
by language.
"""

from __future__ import annotations

from icae.tasks.base import SHARED_UNITS, Example, PreparedData, Task


def repo_needles(rows) -> dict[tuple[str, str], dict[str, str]]:
    """(language, repo) -> {needle name: needle code} over ``rows`` (every task of the eval
    file), in file order; a row's own ``repo_needles`` mapping, when it has one, is taken
    as its repository's complete needle list."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    given: set[tuple[str, str]] = set()
    for row in rows:
        key = (str(row.get("language", "python")), str(row.get("repo", "")))
        if isinstance(row.get("repo_needles"), dict):
            if key not in given:
                out[key] = {str(k): str(v) for k, v in row["repo_needles"].items()}
                given.add(key)
            continue
        if key in given:
            continue
        if "needle_code" not in row:
            continue  # a bad row beyond num_samples; the run names those it evaluates
        name = str(row.get("needle_name", row.get("id")))
        out.setdefault(key, {}).setdefault(name, row["needle_code"])
    return out


class RepoQA(Task):
    def configured(self, data_cfg) -> bool:
        r = data_cfg.repoqa
        return bool(r.release_file or r.train_tasks_file or r.source_dirs)

    def prepare(self, cfg, tokenizer) -> PreparedData:
        from icae.data.repoqa import build_repoqa_sets

        r = cfg.data.repoqa
        # A task JSONL is read as it is; contexts built from a release or trees need tokens.
        needs_tokenizer = bool(r.source_dirs) or bool(
            r.release_file and not str(r.release_file).lower().endswith(
                (".jsonl", ".jsonl.gz", ".jsonl.xz")))
        return PreparedData(*build_repoqa_sets(r, tokenizer() if needs_tokenizer else None,
                                               cfg.seed, skip_bad_lines=cfg.data.skip_bad_lines))

    def training_examples(self, model, cfg, record, max_length, stats):
        from icae.models.task_prompts import PromptRule, repoqa_answer, repoqa_prompt
        from icae.training.examples import keep_example

        pieces = repoqa_prompt(model.prompts, PromptRule.for_model(model),
                               model.prompts.encode(record["context"]), record["description"],
                               cfg.data.repoqa.instruction, repoqa_answer(record))
        return keep_example(model.encode(pieces), max_length, stats, model)

    def evaluation_data(self, cfg, path):
        """Every needle of each repository, not only the evaluated tasks'."""
        from icae.data.prepared import read_records

        return repo_needles(read_records(path))

    def build_examples(self, rows, ctx):
        from icae.models.task_prompts import repoqa_prompt

        cfg = ctx.cfg
        needles = ctx.data if ctx.data is not None else repo_needles(rows)
        out = []
        for row in rows:
            ids = ctx.prompts.encode(row["context"])
            prompt = repoqa_prompt(ctx.prompts, ctx.rule, ids, row["description"],
                                   cfg.data.repoqa.instruction)
            meta = {k: row[k] for k in ("language", "repo", "needle_name", "position_ratio")
                    if k in row}
            key = (str(row.get("language", "python")), str(row.get("repo", "")))
            meta["needle_name"] = str(row.get("needle_name", row.get("id")))
            repo = dict(needles.get(key) or {})
            repo.setdefault(meta["needle_name"], row["needle_code"])
            ex = Example(id=str(row["id"]), prompt=prompt, reference=row["needle_code"],
                         max_new_tokens=self.max_new_tokens(cfg.evaluation),
                         context_lengths=[len(ids)], meta=meta, needles=repo)
            out.append(ctx.finish(ex))
        return out

    def score(self, ex, prediction, pred_ids):
        from icae.evaluation import metrics as M

        lang = ex.meta.get("language", "python")
        sim = M.repoqa_similarity(prediction, ex.reference, lang)
        needles = ex.needles or {ex.meta.get("needle_name", ex.id): ex.reference}
        search = M.repoqa_needle_search(prediction, needles, ex.meta.get("needle_name", ex.id),
                                        lang, threshold=0.8)
        return {"similarity": sim,
                "pass@0.8": float(search["passed"]),  # evalplus/repoqa's definition
                "similarity_pass@0.8": float(M.repoqa_pass(sim, 0.8)),  # looser
                "best_needle_match": float(search["is_best_match"]),
                "bleu1": M.bleu1(ex.reference, prediction)}

    def breakdowns(self, records, means):
        rows = []
        for key in ("position_ratio", "language"):
            values = sorted({r[key] for r in records if key in r}, key=str)
            if key == "language" and len(values) < 2:
                continue
            for v in values:
                rows += means(self.metrics, [r for r in records if r.get(key) == v],
                              f"[{key}={v}]")
        return rows


TASK = RepoQA(
    name="repoqa", dataset="repoqa", title="RepoQA",
    caption="RepoQA needle-function retrieval", dataset_title="RepoQA",
    data_inputs="release_file/train_tasks_file/source_dirs",
    eval_fields=("context", "description", "needle_code", "language"),
    metrics=("similarity", "pass@0.8", "similarity_pass@0.8", "best_needle_match", "bleu1"),
    headline=("similarity", "pass@0.8", "bleu1"),
    units={"similarity": "RepoQA function similarity in [0,1]",
           "pass@0.8": ("RepoQA's official pass@0.8 (evalplus compute_score): the most "
                        "similar of the repository's needles is the target and its "
                        "similarity >= 0.8"),
           "similarity_pass@0.8": ("fraction with similarity to the target >= 0.8, without "
                                   "the best-match condition (looser than pass@0.8)"),
           "best_needle_match": "fraction whose most similar repository needle is the target",
           "bleu1": SHARED_UNITS["bleu1"]},
    budgeted=True,
    # RepoQA's official harness (evalplus/repoqa, search_needle_function.py,
    # evaluate_model) generates up to max_new_tokens=1024; needles run to several hundred
    # tokens, so a shared QA-sized budget would cut correct answers.
    default_max_new_tokens=1024)
