"""Rebuild the samples in data/samples/ (see README.md there for origins and licences).

    python data/samples/make_samples.py --shared ../shared --model-dir models/base

Needs the development copy of ``shared/data`` (pre-training, SQuAD and trajectory samples)
and a prepared base model for its tokenizer (RepoQA samples; prepare it with
``python -m icae prepare-model``). Every choice is deterministic.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240420

PRETRAIN_TRAIN = {  # source prefix -> documents taken (shortest-first within 4-12k chars)
    "moby-dick": 6, "sotu": 8, "gutenberg:Pride-and-Prejudice_1342": 3,
    "gutenberg:Frankenstein": 3, "gutenberg:The-Time-Machine_35": 3,
    "gutenberg:Walden-and-On-The-Duty-Of-Civil-Disobedience_205": 2,
    "gutenberg:The-Adventures-of-Sherlock-Holmes_1661": 2,
    "gutenberg:Alice": 3, "gutenberg:The-Souls-of-Black-Folk": 2,
}
PRETRAIN_EVAL = {"moby-dick": 1, "sotu": 2, "gutenberg:": 3}


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_gz_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                 mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def _pick_docs(docs: list[dict], plan: dict[str, int], lo: int, hi: int) -> list[dict]:
    out = []
    for prefix, n in plan.items():
        cands = [d for d in docs if d["source"].startswith(prefix) and lo <= len(d["text"]) <= hi]
        cands.sort(key=lambda d: d["id"])
        rng = random.Random(f"{SEED}:{prefix}")
        out += sorted(rng.sample(cands, min(n, len(cands))), key=lambda d: d["id"])
    return out


def make_pretrain(shared: Path) -> None:
    corpus = _jsonl(shared / "data/pretrain/corpus.jsonl.gz")
    evals = _jsonl(shared / "data/pretrain/eval.jsonl.gz")
    train = _pick_docs(corpus, PRETRAIN_TRAIN, 4000, 12000)
    test = _pick_docs(evals, PRETRAIN_EVAL, 3000, 12000)
    _write_gz_jsonl(HERE / "pretrain/train.jsonl.gz", train)
    _write_gz_jsonl(HERE / "pretrain/eval.jsonl.gz", test)
    print("pretrain:", len(train), "train docs", sum(len(d["text"]) for d in train), "chars;",
          len(test), "eval docs", sum(len(d["text"]) for d in test), "chars")


def _squad_subset(data: dict, n_questions: int, seed: int) -> dict:
    """Whole paragraphs (all their questions), from articles drawn with ``seed``, until at
    least ``n_questions`` questions; article and paragraph order as in the file."""
    rng = random.Random(seed)
    articles = list(range(len(data["data"])))
    rng.shuffle(articles)
    chosen: dict[int, list[int]] = {}
    total = 0
    for a in articles:
        paras = data["data"][a]["paragraphs"]
        picks = sorted(rng.sample(range(len(paras)), min(3, len(paras))))
        chosen[a] = picks
        total += sum(len(paras[p]["qas"]) for p in picks)
        if total >= n_questions:
            break
    out = []
    for a in sorted(chosen):
        art = data["data"][a]
        out.append({"title": art["title"],
                    "paragraphs": [art["paragraphs"][p] for p in chosen[a]]})
    return {"data": out, "version": data.get("version", "1.1")}


def make_squad(shared: Path) -> None:
    for src, dst, n in (("train-subset-v1.1.json.gz", "train-v1.1-sample.json", 110),
                        ("dev-v1.1.json.gz", "dev-v1.1-sample.json", 100)):
        with gzip.open(shared / "data/squad" / src, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        sub = _squad_subset(data, n, SEED)
        (HERE / "squad").mkdir(parents=True, exist_ok=True)
        (HERE / "squad" / dst).write_text(json.dumps(sub, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        q = sum(len(p["qas"]) for a in sub["data"] for p in a["paragraphs"])
        print(f"squad {dst}: {len(sub['data'])} articles, {q} questions")


def make_trajectories(shared: Path) -> None:
    for split, dst, n in (("train", "train.jsonl.gz", 8), ("val", "eval.jsonl.gz", 2)):
        rows = [r for r in _jsonl(shared / f"data/trajectories/{split}.jsonl.gz")
                if r["source"] == "mini-swe-agent"]
        rows.sort(key=lambda r: (r["num_tokens_qwen3"], r["id"]))
        _write_gz_jsonl(HERE / "trajectories" / dst, rows[:n])
        print(f"trajectories {dst}: {[r['instance_id'] for r in rows[:n]]}")


def make_repoqa(model_dir: str) -> None:
    from icae.data.io import SkipLog, write_jsonl
    from icae.data.repoqa_tree import build_tasks_from_tree
    from icae.models.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    for spec, dst, n, seed in (("pkg:click", "train.jsonl.gz", 32, SEED),
                               ("pkg:jinja2", "eval.jsonl.gz", 16, SEED + 1)):
        skips = SkipLog()
        tasks = build_tasks_from_tree(spec, tok, num_tasks=n, context_tokens=1024,
                                      position_ratios=(0.1, 0.5, 0.9), seed=seed, skips=skips)
        write_jsonl(HERE / "repoqa" / dst, tasks)
        print(f"repoqa {dst}: {len(tasks)} tasks from {tasks[0]['repo']}; skipped "
              f"{dict(skips.counts)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", default=str(HERE.parents[2] / "shared"))
    ap.add_argument("--model-dir", default="models/base")
    ap.add_argument("--only", nargs="*", default=["pretrain", "squad", "trajectories", "repoqa"])
    args = ap.parse_args()
    shared = Path(args.shared)
    if "pretrain" in args.only:
        make_pretrain(shared)
    if "squad" in args.only:
        make_squad(shared)
    if "trajectories" in args.only:
        make_trajectories(shared)
    if "repoqa" in args.only:
        make_repoqa(args.model_dir)


if __name__ == "__main__":
    main()
