"""What kind of wrong answers a SQuAD evaluation gives: of the answers that are not an
exact match, how many are a span of the paragraph (the model read the text but picked the
wrong part) and how many are words the paragraph does not contain (it did not read the
text faithfully), and how many share at least one word with a gold answer.

Usage: python benchmarks/gpu/squad_errors.py SQUAD_JSON[.gz] PREDICTIONS.jsonl[.gz]...
(predictions: the evaluation's predictions.jsonl or the compact copies in docs/results/;
SQUAD_JSON: the file whose paragraphs the questions ask about).
"""
import gzip
import json
import sys

from icae.evaluation.metrics import normalize_answer


def _open(path):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path)


def contexts(path: str) -> dict[str, str]:
    with _open(path) as f:
        data = json.load(f)["data"]
    return {q["id"]: p["context"] for a in data for p in a["paragraphs"] for q in p["qas"]}


def error_kinds(rows: list[dict], context_of: dict[str, str]) -> dict:
    def score(r, k):
        return r[k] if k in r else r["metrics"][k]
    wrong = [r for r in rows if score(r, "exact_match") == 0]
    in_text = sum(1 for r in wrong if normalize_answer(r["prediction"])
                  and normalize_answer(r["prediction"]) in normalize_answer(context_of[r["id"]]))
    overlap = sum(1 for r in wrong if score(r, "f1") > 0)
    return {"questions": len(rows), "wrong": len(wrong),
            "wrong_and_a_span_of_the_paragraph": round(in_text / max(1, len(wrong)), 3),
            "wrong_but_sharing_words_with_gold": round(overlap / max(1, len(wrong)), 3)}


if __name__ == "__main__":
    ctx = contexts(sys.argv[1])
    for path in sys.argv[2:]:
        with _open(path) as f:
            rows = [json.loads(line) for line in f]
        print(path, json.dumps(error_kinds(rows, ctx)))
