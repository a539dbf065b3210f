import json
from pathlib import Path

import pytest

from icae.config import SquadDataConfig
from icae.data.io import DataError, SkipLog
from icae.data.io import seeded_subset as select
from icae.data.squad import build_squad_sets, load_squad
from tests.conftest import shared_path

FIX = Path(__file__).resolve().parent / "fixtures" / "data" / "squad"
V1, V2 = FIX / "mini-v1.1.json", FIX / "mini-v2.0.json"


def test_v11_keeps_every_gold_answer():
    recs = load_squad(V1)
    assert [r["id"] for r in recs] == ["h1", "h2", "h3", "l1", "l2", "l3"]
    h1 = recs[0]
    assert set(h1) == {"id", "title", "context", "question", "answers"}
    assert h1["answers"] == ["1820", "1820", "in 1820"]  # duplicates kept, file order
    assert h1["title"] == "Harbour" and h1["context"].startswith("The harbour")


def test_v20_unanswerable_configurable():
    skips = SkipLog()
    recs = load_squad(V2, skips=skips)
    assert [r["id"] for r in recs] == ["h1", "h2", "l1"]
    assert skips.counts["unanswerable"] == 2
    recs = load_squad(V2, include_unanswerable=True)
    assert [r["id"] for r in recs] == ["h1", "h9", "h2", "l1", "l9"]
    assert recs[1]["answers"] == []  # plausible answers are not gold answers


def _write(tmp_path, data, name="s.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data, indent=1) if not isinstance(data, str) else data)
    return p


def test_bad_input(tmp_path):
    data = json.loads(V1.read_text())
    del data["data"][0]["paragraphs"][1]["qas"][0]["question"]
    p = _write(tmp_path, data)
    with pytest.raises(DataError, match=r"s\.json: data\[0\]\.paragraphs\[1\]\.qas\[0\]: "
                                         r"missing field 'question'"):
        load_squad(p)
    skips = SkipLog()
    assert len(load_squad(p, skip_bad_lines=True, skips=skips)) == 5
    assert skips.counts == {"missing_field": 1}

    data = json.loads(V1.read_text())
    data["data"][1]["paragraphs"][0]["context"] = "   "
    p = _write(tmp_path, data)
    with pytest.raises(DataError, match=r"data\[1\]\.paragraphs\[0\]: empty or missing "
                                         r"'context' \(3 questions\)"):
        load_squad(p)
    skips = SkipLog()
    assert len(load_squad(p, skip_bad_lines=True, skips=skips)) == 3
    assert skips.counts == {"empty_context": 1}

    with pytest.raises(DataError, match=r"broken\.json:3:\d+: invalid JSON"):
        load_squad(_write(tmp_path, '{"data": [\n {"title": "x",\n  "paragraphs": ]}\n',
                          "broken.json"))
    with pytest.raises(DataError, match="not a SQuAD file"):
        load_squad(_write(tmp_path, {"questions": []}))
    data = json.loads(V1.read_text())
    data["data"][0]["paragraphs"][0]["qas"][1]["id"] = "h1"
    with pytest.raises(DataError, match="duplicate question id 'h1'"):
        load_squad(_write(tmp_path, data))
    empty = {"data": [{"title": "t", "paragraphs": [{"context": "", "qas": []}]}]}
    with pytest.raises(DataError, match="no usable SQuAD questions"):
        load_squad(_write(tmp_path, empty), skip_bad_lines=True)


def test_selection_by_count_is_seeded():
    recs = load_squad(V1)
    a, b, c = select(recs, 3, 0), select(recs, 3, 0), select(recs, 3, 5)
    assert a == b and len(a) == 3
    assert [r["id"] for r in a] == sorted((r["id"] for r in a),
                                          key=[x["id"] for x in recs].index)
    assert select(recs, None, 0) == recs and select(recs, 100, 0) == recs
    assert a != c or len(recs) <= 3


def test_sets_from_files_and_same_file_split(tmp_path):
    v2 = json.loads(V2.read_text())
    for art in v2["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                qa["id"] = "v2-" + qa["id"]
    other = _write(tmp_path, v2, "v2.json")
    train, ev, summary = build_squad_sets(
        SquadDataConfig(train_file=str(V1), eval_file=str(other), train_size=4), seed=0)
    assert len(train) == 4 and len(ev) == 3
    assert summary["train"]["questions"] == 4 and summary["eval"]["available"] == 3
    with pytest.raises(DataError, match="in both the train and the eval set"):
        build_squad_sets(SquadDataConfig(train_file=str(V1), eval_file=str(V2)), seed=0)
    train, ev, summary = build_squad_sets(
        SquadDataConfig(train_file=str(V1), eval_file=str(V1), eval_size=2), seed=0)
    assert len(ev) == 2 and len(train) == 4 and summary["same_source_split"]
    assert not {r["id"] for r in train} & {r["id"] for r in ev}
    with pytest.raises(DataError, match="give train_file"):
        build_squad_sets(SquadDataConfig(), seed=0)


@pytest.fixture
def hf_offline(monkeypatch):
    """Hub calls fail at once (no retries), with or without network."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def test_unknown_hf_dataset_is_a_clear_error(hf_offline):
    with pytest.raises(DataError, match=r"data\.squad\.hf_dataset: cannot load Hugging Face "
                                         r"dataset 'no-such-org/not-squad-xyz'.*train_file"):
        build_squad_sets(SquadDataConfig(hf_dataset="no-such-org/not-squad-xyz"), seed=0)


def test_real_squad_files():
    dev = load_squad(shared_path("data", "squad", "dev-v1.1.json.gz"))
    assert len(dev) == 10570
    assert sum(len(r["answers"]) for r in dev) == 34726
    train = load_squad(shared_path("data", "squad", "train-subset-v1.1.json.gz"))
    assert len(train) == 11877 and all(len(r["answers"]) == 1 for r in train)
    assert not {r["id"] for r in dev} & {r["id"] for r in train}
