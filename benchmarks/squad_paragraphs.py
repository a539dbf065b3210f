"""Write SQuAD paragraphs as pre-training-style documents ({"id", "source", "text"} per
line, one article's paragraphs joined by blank lines), so that `prepare-data` can cut them
into autoencoding spans: how faithfully does a checkpoint's memory hold Wikipedia text
(SQuAD's domain; ~1% of the shared pre-training corpus)?

Usage: python benchmarks/squad_paragraphs.py SQUAD_JSON[.gz] OUT.jsonl.gz [MAX_ARTICLES]
"""
import gzip
import json
import os
import sys


def main(src: str, out: str, max_articles: int | None = None) -> None:
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rt", encoding="utf-8") as f:
        articles = json.load(f)["data"]
    with gzip.open(out + ".tmp", "wt", encoding="utf-8") as f:
        for a in articles[:max_articles]:
            text = "\n\n".join(p["context"] for p in a["paragraphs"])
            f.write(json.dumps({"id": f"squad-{a['title']}", "source": "squad:" + a["title"],
                                "text": text}) + "\n")
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
