"""SQuAD: the official JSON (v1.1 and v2.0) from a local file, or the Hugging Face
``squad`` / ``squad_v2`` datasets by name.

Record: ``{"id", "title", "context", "question", "answers": [str, ...]}`` with every gold
answer (duplicates between annotators kept, in file order). SQuAD 2.0 questions marked
``is_impossible`` are dropped (and counted) unless ``include_unanswerable``; then their
``answers`` is ``[]``. The question prompt is ``data.squad.prompt``, applied when prompts
are built, not stored here. Train / eval subsets are drawn by count with a fixed seed.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from icae.config import SquadDataConfig
from icae.data.io import DataError, SkipLog, bad_record, read_json, seeded_subset

log = logging.getLogger(__name__)


def _parse_official(data, path: str, include_unanswerable: bool, skip_bad_lines: bool,
                    skips: SkipLog) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not a SQuAD file: expected a JSON object with a 'data' list "
                        "of articles (official SQuAD v1.1 / v2.0 format)")
    out: list[dict] = []
    seen: set[str] = set()
    for a, article in enumerate(data["data"]):
        where_a = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            bad_record("article without a 'paragraphs' list", where_a, skip_bad_lines, skips,
                       "bad_article")
            continue
        title = article.get("title", "")
        if not isinstance(title, str):
            title = str(title)
        for p, para in enumerate(article["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{p}]"
            if not isinstance(para, dict):
                bad_record("paragraph is not an object", where_p, skip_bad_lines, skips,
                           "bad_paragraph")
                continue
            context = para.get("context")
            if not isinstance(context, str) or not context.strip():
                n = len(para.get("qas", []) or []) if isinstance(para.get("qas"), list) else 0
                bad_record(f"empty or missing 'context' ({n} questions)", where_p,
                           skip_bad_lines, skips, "empty_context")
                continue
            qas = para.get("qas")
            if not isinstance(qas, list):
                bad_record("missing 'qas' list", where_p, skip_bad_lines, skips,
                           "missing_field")
                continue
            for q, qa in enumerate(qas):
                where = f"{where_p}.qas[{q}]"
                if not isinstance(qa, dict):
                    bad_record("question is not an object", where, skip_bad_lines, skips,
                               "missing_field")
                    continue
                problem = None
                for key in ("id", "question", "answers"):
                    if key not in qa:
                        problem = f"missing field {key!r}"
                        break
                if problem is None and (not isinstance(qa["question"], str)
                                        or not qa["question"].strip()):
                    problem = "empty 'question'"
                if problem is None and not isinstance(qa["answers"], list):
                    problem = "'answers' must be a list"
                if problem:
                    bad_record(problem, where, skip_bad_lines, skips, "missing_field")
                    continue
                qid = str(qa["id"])
                impossible = bool(qa.get("is_impossible", False))
                texts = []
                for ans in qa["answers"]:
                    text = ans.get("text") if isinstance(ans, dict) else None
                    if not isinstance(text, str):
                        problem = "an answer without a 'text' string"
                        break
                    texts.append(text)
                if problem:
                    bad_record(problem, where, skip_bad_lines, skips, "missing_field")
                    continue
                if impossible:
                    if not include_unanswerable:
                        skips.add("unanswerable", where)
                        continue
                    texts = []
                elif not texts:
                    bad_record(f"question {qid} has no answers and is not marked "
                               "is_impossible", where, skip_bad_lines, skips, "no_answers")
                    continue
                if qid in seen:
                    bad_record(f"duplicate question id {qid!r}", where, skip_bad_lines, skips,
                               "duplicate_id")
                    continue
                seen.add(qid)
                out.append({"id": qid, "title": title, "context": context,
                            "question": qa["question"].strip(), "answers": texts})
    return out


def load_squad_file(path: str | Path, *, include_unanswerable: bool = False,
                    skip_bad_lines: bool = False, skips: SkipLog | None = None) -> list[dict]:
    """Questions of an official SQuAD JSON file (``.json``, ``.json.gz``)."""
    skips = skips if skips is not None else SkipLog()
    data = read_json(path)
    records = _parse_official(data, str(path), include_unanswerable, skip_bad_lines, skips)
    if not records:
        raise DataError(f"{path}: no usable SQuAD questions (skipped: {dict(skips.counts)})")
    return records


def load_squad_hf(name: str, split: str, *, config: str | None = None,
                  include_unanswerable: bool = False, skips: SkipLog | None = None
                  ) -> list[dict]:
    """Questions of a Hugging Face SQuAD-format dataset (``squad``, ``rajpurkar/squad_v2``)."""
    skips = skips if skips is not None else SkipLog()
    try:
        import datasets  # lazy: slow import

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"data.squad.hf_dataset: cannot load Hugging Face dataset {name!r} (split "
            f"{split!r}): {type(exc).__name__}: {exc}. Check the name (e.g. 'squad', "
            "'rajpurkar/squad_v2'); without access to the hub, use data.squad.train_file / "
            "eval_file with the official JSON") from exc
    missing = {"id", "context", "question", "answers"} - set(ds.column_names)
    if missing:
        raise DataError(f"data.squad.hf_dataset: {name!r} is not in SQuAD format (missing "
                        f"columns {sorted(missing)})")
    out = []
    for i, row in enumerate(ds):
        texts = list(row["answers"]["text"]) if row["answers"] else []
        if not row["context"] or not row["context"].strip():
            skips.add("empty_context", f"{name}[{split}] row {i}")
            continue
        if not texts:
            if not include_unanswerable:
                skips.add("unanswerable", f"{name}[{split}] row {i}")
                continue
        out.append({"id": str(row["id"]), "title": row.get("title", "") or "",
                    "context": row["context"], "question": row["question"].strip(),
                    "answers": texts})
    if not out:
        raise DataError(f"data.squad.hf_dataset: {name!r} split {split!r} has no usable "
                        "questions")
    return out


def load_squad(source: str | Path, *, split: str | None = None, config: str | None = None,
               include_unanswerable: bool = False, skip_bad_lines: bool = False,
               skips: SkipLog | None = None) -> list[dict]:
    """A local official SQuAD JSON file, or (when ``source`` is not an existing path and a
    ``split`` is given) a Hugging Face dataset name."""
    if Path(source).exists() or split is None:
        return load_squad_file(source, include_unanswerable=include_unanswerable,
                               skip_bad_lines=skip_bad_lines, skips=skips)
    return load_squad_hf(str(source), split, config=config,
                         include_unanswerable=include_unanswerable, skips=skips)


def build_squad_sets(scfg: SquadDataConfig, seed: int, *, skip_bad_lines: bool = False
                     ) -> tuple[list[dict], list[dict], dict]:
    """``(train, eval, summary)``. Each split comes from its file when given, else from the
    Hugging Face dataset. When both splits name the same file, they are drawn disjointly."""
    skips = {"train": SkipLog(), "eval": SkipLog()}
    loaded: dict[str, list[dict]] = {}
    origin: dict[str, str] = {}
    for split, path, hf_split in (("train", scfg.train_file, scfg.hf_train_split),
                                  ("eval", scfg.eval_file, scfg.hf_eval_split)):
        if path:
            loaded[split] = load_squad_file(path, include_unanswerable=scfg.include_unanswerable,
                                            skip_bad_lines=skip_bad_lines, skips=skips[split])
            origin[split] = str(path)
        elif scfg.hf_dataset:
            loaded[split] = load_squad_hf(scfg.hf_dataset, hf_split, config=scfg.hf_config,
                                          include_unanswerable=scfg.include_unanswerable,
                                          skips=skips[split])
            origin[split] = f"hf:{scfg.hf_dataset}[{hf_split}]"
    if not loaded:
        raise DataError("data.squad: give train_file / eval_file or hf_dataset")
    same = "train" in loaded and "eval" in loaded and origin["train"] == origin["eval"]
    if same:
        # One source for both: a seeded permutation; eval first, train from the rest.
        records = loaded["eval"]
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_eval = len(records) // 10 if scfg.eval_size is None else min(scfg.eval_size,
                                                                         len(records))
        eval_idx = sorted(order[:n_eval])
        rest = sorted(order[n_eval:])
        eval_set = [records[i] for i in eval_idx]
        train_pool = [records[i] for i in rest]
        train = seeded_subset(train_pool, scfg.train_size, seed)
        log.warning("data.squad: train and eval come from the same source %s; drew %d eval "
                    "and %d train questions disjointly", origin["train"], len(eval_set),
                    len(train))
    else:
        train = seeded_subset(loaded.get("train", []), scfg.train_size, seed)
        eval_set = seeded_subset(loaded.get("eval", []), scfg.eval_size, seed + 1)
        overlap = {r["id"] for r in train} & {r["id"] for r in eval_set}
        if overlap:
            raise DataError(f"data.squad: {len(overlap)} question ids are in both the train and "
                            f"the eval set (e.g. {sorted(overlap)[0]}); use disjoint files")
    for split, records in (("train", train), ("eval", eval_set)):
        if split in loaded and not records:
            raise DataError(f"data.squad: the {split} set is empty ({split}_size="
                            f"{getattr(scfg, split + '_size')})")
    summary = {
        "train": {"questions": len(train), "source": origin.get("train"),
                  "available": len(loaded.get("train", []))},
        "eval": {"questions": len(eval_set), "source": origin.get("eval"),
                 "available": len(loaded.get("eval", []))},
        "same_source_split": same,
        "answers_per_question_eval": (sum(len(r["answers"]) for r in eval_set)
                                      / max(1, len(eval_set))),
        "unanswerable": {s: sum(1 for r in recs if not r["answers"])
                         for s, recs in (("train", train), ("eval", eval_set))},
        "skipped": {s: skips[s].as_dict() for s in skips},
    }
    return train, eval_set, summary
