"""Held-out autoencoding of several runs side by side, from their predictions files, with
the autoencoding task's current scores (so files written before a metric was added, e.g.
BLEU-4, get it too): a markdown table on stdout.

    python benchmarks/gpu/ae_table.py docs/results/2026-12-07c-h100/eval-ae-test-*.predictions.jsonl.gz
"""
import gzip
import json
import sys
from pathlib import Path

from icae.evaluation import metrics as M


def rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(paths: list[str]) -> None:
    print("| run | spans | slots | BLEU-1 | BLEU-4 | token acc. | exact |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p in map(Path, paths):
        rs = rows(p)
        n = len(rs)
        mean = lambda values: sum(values) / n  # noqa: E731
        name = p.name.removeprefix("eval-ae-test-").split(".predictions")[0]
        print(f"| {name} | {n} | {sum(r['memory_slots'] for r in rs)} "
              f"| {mean([M.bleu1(r['reference'], r['prediction']) for r in rs]):.4f} "
              f"| {mean([M.bleu4(r['reference'], r['prediction']) for r in rs]):.4f} "
              # token accuracy needs the token ids, which the files do not keep
              f"| {mean([r['metrics']['token_accuracy'] for r in rs]):.4f} "
              f"| {mean([M.exact_match(r['prediction'], r['reference']) for r in rs]):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
