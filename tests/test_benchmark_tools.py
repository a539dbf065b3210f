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


def test_squad_f1_by_answer_position(tmp_path, tiny_tok):
    by_position = _load("benchmarks/gpu/squad_by_position.py")
    context = "Denver Broncos beat the Carolina Panthers in 2016."
    squad = {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "answers": [{"answer_start": 0, "text": "Denver Broncos"}],
         "question": "Who beat the Carolina Panthers in the final?"},
        {"id": "b", "answers": [{"answer_start": context.index("2016"), "text": "2016"}]}]}]}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    positions = by_position.answer_positions(str(path), tiny_tok)
    ids = tiny_tok(context, add_special_tokens=False)["input_ids"]
    assert (positions["a"]["offset"], positions["a"]["length"]) == (0, len(ids))
    # the token that holds the answer's first character
    offset = positions["b"]["offset"]
    assert "2016".startswith(tiny_tok.decode(ids[offset:offset + 1]).strip()[:1])
    assert tiny_tok.decode(ids[:offset]).strip() == "Denver Broncos beat the Carolina Panthers in"
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(json.dumps(r) for r in (
        {"id": "a", "metrics": {"f1": 1.0}}, {"id": "b", "f1": 0.5})))
    df = by_position.table({"m": str(preds)}, positions)
    table = by_position.by(df, "offset", [0, 1, 100000])
    assert table.loc["0-0", "m"] == 100.0 and table.loc[">= 1", "m"] == 50.0
    assert table["questions"].tolist() == [1, 1]
    # "beat", "carolina", "panthers" of "beat carolina panthers final" are in the sentence
    assert positions["a"]["overlap"] == 75.0 and positions["b"]["overlap"] == 0.0
    assert by_position.sentence_around("One. Two three. Four.", 7) == "Two three"
