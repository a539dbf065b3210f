"""The analysis helpers under benchmarks/ that the results documents quote."""
import gzip
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SQUAD = {"data": [{"title": "T", "paragraphs": [
    {"context": "Denver Broncos beat the Carolina Panthers in 2016.",
     "qas": [{"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "d"}]},
    {"context": "Second paragraph.", "qas": [{"id": "e"}]}]}]}


def test_squad_error_kinds(tmp_path):
    errors = _load("benchmarks/gpu/squad_errors.py")
    path = tmp_path / "dev.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(SQUAD, f)
    ctx = errors.contexts(str(path))
    assert ctx["a"].startswith("Denver") and ctx["e"] == "Second paragraph."
    rows = [{"id": "a", "prediction": "Denver Broncos", "exact_match": 1.0, "f1": 1.0},
            # wrong, but words of the paragraph (normalised: case, articles, punctuation)
            {"id": "b", "prediction": "the carolina Panthers.", "exact_match": 0.0, "f1": 0.0},
            # wrong, not in the paragraph, one word shared with the gold answer
            {"id": "c", "prediction": "Denworth Broncos", "exact_match": 0.0, "f1": 0.5},
            # the evaluation's own row layout (metrics nested), empty prediction
            {"id": "d", "prediction": "", "metrics": {"exact_match": 0.0, "f1": 0.0}}]
    assert errors.error_kinds(rows, ctx) == {
        "questions": 4, "wrong": 3, "wrong_and_a_span_of_the_paragraph": round(1 / 3, 3),
        "wrong_but_sharing_words_with_gold": round(1 / 3, 3)}


def test_squad_paragraphs_become_documents(tmp_path):
    writer = _load("benchmarks/squad_paragraphs.py")
    src = tmp_path / "dev.json"
    src.write_text(json.dumps(SQUAD))
    out = tmp_path / "docs.jsonl.gz"
    writer.main(str(src), str(out))
    docs = [json.loads(line) for line in gzip.open(out, "rt")]
    assert docs == [{"id": "squad-T", "source": "squad:T",
                     "text": "Denver Broncos beat the Carolina Panthers in 2016.\n\n"
                             "Second paragraph."}]
