"""SQuAD F1 by where the answer sits in the paragraph, for several evaluations side by side.

An ICAE memory is cut into segments (128 tokens at rate 4 for SmolLM2) and the
truncation baseline keeps only the first quarter of the text, so a model that reads its
memory badly in some region shows it here: mean F1 by the token offset of the first gold
answer (the context tokenised as the evaluation does, with the checkpoint's tokenizer),
by the paragraph's length, and by how much the question quotes the answer's sentence (the
share of its content words found there: a question that quotes its sentence is a lookup
by quotation, which the recall objective trains). F1 in percent, as the official script
reports it.

Usage: python benchmarks/gpu/squad_by_position.py TOKENIZER_DIR SQUAD_JSON[.gz]
           NAME=PREDICTIONS.jsonl[.gz]...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from squad_errors import _open  # noqa: E402

from icae.evaluation.metrics import normalize_answer  # noqa: E402

OFFSET_BINS = [0, 32, 64, 96, 128, 192, 100000]
LENGTH_BINS = [0, 128, 192, 256, 100000]
OVERLAP_BINS = [0, 25, 50, 75, 100000]
# Question words that say nothing about where the answer is.
FUNCTION_WORDS = frozenset(
    "what which who whom whose when where why how did does do is was were are be been of "
    "in on to for by with and or from at as that this it its into than".split())


def sentence_around(context: str, start: int) -> str:
    """The sentence of ``context`` that holds character ``start`` (cut at '. ')."""
    left = context.rfind(". ", 0, start)
    right = context.find(". ", start)
    return context[left + 2 if left >= 0 else 0:right if right >= 0 else len(context)]


def quoted_share(question: str, sentence: str) -> float:
    """Percent of the question's content words (normalised as SQuAD's metric does) that
    occur in ``sentence``."""
    words = [w for w in normalize_answer(question).split() if w not in FUNCTION_WORDS]
    found = set(normalize_answer(sentence).split())
    return 100.0 * sum(w in found for w in words) / len(words) if words else 0.0


def answer_positions(squad_path: str, tokenizer) -> dict[str, dict]:
    """question id -> {offset: token offset of the first gold answer, length: paragraph
    tokens, overlap: the question's quoted share of the answer's sentence}."""
    with _open(squad_path) as f:
        data = json.load(f)["data"]
    out = {}
    for article in data:
        for para in article["paragraphs"]:
            enc = tokenizer(para["context"], add_special_tokens=False,
                            return_offsets_mapping=True)
            spans = enc["offset_mapping"]
            for q in para["qas"]:
                start = q["answers"][0]["answer_start"]
                token = next((i for i, (a, b) in enumerate(spans) if b > start), len(spans))
                out[q["id"]] = {"offset": token, "length": len(spans), "overlap": quoted_share(
                    q.get("question", ""), sentence_around(para["context"], start))}
    return out


def table(named_predictions: dict[str, str], positions: dict) -> pd.DataFrame:
    rows = []
    for name, path in named_predictions.items():
        with _open(path) as f:
            for line in f:
                r = json.loads(line)
                f1 = r["f1"] if "f1" in r else r["metrics"]["f1"]  # a fraction per question
                rows.append({"model": name, **positions[r["id"]], "f1": 100 * f1})
    return pd.DataFrame(rows)


def by(df: pd.DataFrame, column: str, bins: list[int]) -> pd.DataFrame:
    cut = pd.cut(df[column], bins, right=False)
    out = df.assign(bucket=cut).pivot_table(index="bucket", columns="model", values="f1",
                                            aggfunc="mean", observed=True).round(1)
    out.insert(0, "questions", df[df["model"] == df["model"].iloc[0]].assign(
        bucket=cut).groupby("bucket", observed=True).size())
    out.index = [f"{int(i.left)}-{int(i.right) - 1}" if i.right < 100000
                 else f">= {int(i.left)}" for i in out.index]
    return out


def main(argv: list[str]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(argv[0])
    positions = answer_positions(argv[1], tokenizer)
    named = dict(arg.split("=", 1) for arg in argv[2:])
    df = table(named, positions)
    print("SQuAD F1 by the first gold answer's token offset in the paragraph")
    print(by(df, "offset", OFFSET_BINS).to_markdown())
    print("\nSQuAD F1 by the paragraph's length in tokens")
    print(by(df, "length", LENGTH_BINS).to_markdown())
    print("\nSQuAD F1 by the percent of the question's content words in the answer's sentence")
    print(by(df, "overlap", OVERLAP_BINS).to_markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
