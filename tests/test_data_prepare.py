import json
from pathlib import Path

import pytest

from icae.config import config_from_dict, load_config
from icae.data.io import DataError
from icae.data.prepared import TokenDocuments, read_records
from icae.data.prepare import configured_sets, run

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
FIX = Path(__file__).resolve().parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A prepared-model folder as far as data preparation needs one: tokenizer + config."""
    from icae.testing import tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_tokenizer().save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def sample_cfg(model_dir, out, **data):
    d = {
        "prepared_dir": str(out),
        "progress": False,
        "pretrain": {"sources": [{"path": str(SAMPLES / "pretrain/train.jsonl.gz")}],
                     "eval_sources": [{"path": str(SAMPLES / "pretrain/eval.jsonl.gz")}],
                     "min_len": 128, "token_num": 20000, "eval_size": 8,
                     "max_examples_per_doc": 4},
        "squad": {"train_file": str(SAMPLES / "squad/train-v1.1-sample.json"),
                  "eval_file": str(SAMPLES / "squad/dev-v1.1-sample.json"), "eval_size": 50},
        "repoqa": {"train_tasks_file": str(SAMPLES / "repoqa/train.jsonl.gz"),
                   "release_file": str(SAMPLES / "repoqa/eval.jsonl.gz"),
                   "num_train": 8, "num_eval": 4},
        "trajectories": {"train_file": str(SAMPLES / "trajectories/train.jsonl.gz"),
                         "eval_file": str(SAMPLES / "trajectories/eval.jsonl.gz"),
                         "max_trajectories_train": 2, "max_observation_tokens": 256,
                         "max_target_tokens": 128, "max_turns": 6},
    }
    d.update(data)
    return config_from_dict({"seed": 7, "model": {"model_dir": str(model_dir)}, "data": d})


def test_prepare_every_set_from_the_samples(model_dir, tmp_path, capsys):
    cfg = sample_cfg(model_dir, tmp_path / "prepared")
    summaries = run(cfg)
    # Each set's line says how long it took and how fast; no bar redraws in a log.
    out_text = capsys.readouterr()
    lines = [l for l in out_text.out.splitlines() if l.startswith(("pretrain:", "squad:"))]
    assert len(lines) == 2 and all("elapsed " in l and "records/s" in l for l in lines), lines
    assert "\r" not in out_text.err + out_text.out
    assert list(summaries) == ["pretrain", "squad", "repoqa", "trajectories"]
    out = tmp_path / "prepared"
    keys = {
        "pretrain": {"id", "task", "context_ids", "continuation_ids", "source"},
        "squad": {"id", "title", "context", "question", "answers"},
        "repoqa": {"id", "language", "repo", "context", "description", "needle_name",
                   "needle_code", "position_ratio", "context_tokens"},
        "trajectories": {"id", "messages", "cut"},
    }
    for name, want in keys.items():
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["set"] == name and summary["seed"] == 7
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "eval.arrow", "summary.json", "train.arrow"]
        for split in ("train", "eval"):
            if (name, split) == ("pretrain", "train"):
                continue  # documents, below
            rows = list(read_records(out / name / f"{split}.arrow"))
            assert rows, (name, split)
            assert summary["files"][f"{split}.arrow"] == len(rows)
            for row in rows:
                assert want <= set(row), (name, split, set(row))
    # pre-training: the training documents' tokens, not their prepare-time spans
    pre = json.loads((out / "pretrain/summary.json").read_text())
    docs = TokenDocuments(out / "pretrain/train.arrow")
    assert len(docs) == pre["files"]["train.arrow"] == pre["train_documents"]["documents"]
    assert int(docs.offsets[-1]) == pre["train_documents"]["tokens"] >= pre["train"]["tokens"]
    assert pre["train"]["ae"] and pre["train"]["lm"] and pre["tokens_per_s"] > 0
    assert pre["tokenized_tokens"] >= pre["train_documents"]["tokens"] and pre["num_proc"] == 1
    ev = list(read_records(out / "pretrain/eval.arrow"))
    assert all(isinstance(i, int) for i in ev[0]["context_ids"])
    sq = list(read_records(out / "squad/eval.arrow"))
    assert len(sq) == 50 and any(len(r["answers"]) > 1 for r in sq)
    traj = list(read_records(out / "trajectories/train.arrow"))
    assert len(traj) == 2
    assert all("compress" in m for r in traj for m in r["messages"])
    assert sum(m["role"] == "assistant" for m in traj[0]["messages"]) <= 6
    assert len(read_records(out / "repoqa/train.arrow")) == 8
    assert len(read_records(out / "repoqa/eval.arrow")) == 4


def test_deterministic_and_build_selection(model_dir, tmp_path):
    a = sample_cfg(model_dir, tmp_path / "a", build=["pretrain", "trajectories"])
    b = sample_cfg(model_dir, tmp_path / "b", build=["pretrain", "trajectories"])
    assert configured_sets(a) == ["pretrain", "trajectories"]
    run(a)
    run(b)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["pretrain", "trajectories"]
    for name in ("pretrain/train.arrow", "pretrain/eval.arrow", "trajectories/train.arrow"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_repoqa_from_source_dirs(model_dir, tmp_path):
    cfg = sample_cfg(model_dir, tmp_path / "p", build=["repoqa"],
                     repoqa={"source_dirs": [str(FIX / "repoqa/minipkg")], "num_train": 4,
                             "num_eval": 2, "context_tokens": 800})
    run(cfg)
    train = list(read_records(tmp_path / "p/repoqa/train.arrow"))
    ev = list(read_records(tmp_path / "p/repoqa/eval.arrow"))
    assert len(train) == 4 and len(ev) == 2
    assert not {t["needle_name"] for t in train} & {t["needle_name"] for t in ev}


def test_nothing_to_build_and_atomic_failure(model_dir, tmp_path):
    empty = config_from_dict({"model": {"model_dir": str(model_dir)},
                              "data": {"prepared_dir": str(tmp_path / "x")}})
    with pytest.raises(DataError, match="nothing to build"):
        run(empty)
    cfg = sample_cfg(model_dir, tmp_path / "p", build=["squad"])
    run(cfg)
    before = (tmp_path / "p/squad/train.arrow").read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"title": "t", "paragraphs": [{"context": "", "qas": []}]}]}')
    broken = sample_cfg(model_dir, tmp_path / "p", build=["squad"],
                        squad={"train_file": str(bad),
                               "eval_file": str(SAMPLES / "squad/dev-v1.1-sample.json")})
    with pytest.raises(DataError, match=r"bad\.json: data\[0\]\.paragraphs\[0\]: empty"):
        run(broken)
    assert (tmp_path / "p/squad/train.arrow").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["squad"]  # no temp folders


def test_unconfigured_split_is_an_empty_split(model_dir, tmp_path):
    cfg = sample_cfg(model_dir, tmp_path / "p", build=["squad"],
                     squad={"eval_file": str(SAMPLES / "squad/dev-v1.1-sample.json")})
    summary = run(cfg)["squad"]
    assert summary["empty_splits"] == ["train"] and summary["files"]["train.arrow"] == 0
    assert len(read_records(tmp_path / "p/squad/train.arrow")) == 0
    assert len(read_records(tmp_path / "p/squad/eval.arrow")) == 103


@pytest.mark.parametrize("override, message", [
    ("data.build=[pretrain,sqad]", "data.build[1]: must be one of"),
    ("data.pretrain.len_jitter=1.5", "data.pretrain.len_jitter: must be in [0, 1)"),
    ("data.pretrain.max_examples_per_doc=0", "data.pretrain.max_examples_per_doc"),
    ("data.trajectories.max_turns=0", "data.trajectories.max_turns: must be >= 1 or null"),
    ("data.repoqa.position_ratios=[]", "data.repoqa.position_ratios: must not be empty"),
    ("data.squad.eval_size=-1", "data.squad.eval_size: must be >= 0 or null"),
])
def test_config_validation(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_cli_reports_bad_input_plainly(model_dir, tmp_path, capsys):
    from icae.cli import main

    bad = tmp_path / "t.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                   '{"role": "user", "content": "again"}]}\n')
    with pytest.raises(SystemExit) as exc:
        main(["prepare-data", f"model.model_dir={model_dir}",
              f"data.prepared_dir={tmp_path / 'p'}", f"data.trajectories.train_file={bad}"])
    assert exc.value.code == 1
    assert f"icae prepare-data: error: {bad}:1: message 1: roles must alternate" in \
        capsys.readouterr().err


def test_output_does_not_depend_on_the_worker_count(model_dir, tmp_path, monkeypatch):
    """Tokenizing in 1 or 2 processes gives byte-identical files and the same summary
    (but its timing and worker count)."""
    from icae.data import corpus

    monkeypatch.setattr(corpus, "TOKENIZE_BLOCK", 3)  # 33 documents: 11 blocks to share
    summaries = {}
    for n in (1, 2):
        if n == 2:  # every block is tokenized by a worker, none in this process
            monkeypatch.setattr(corpus, "_encode_block", None)
        cfg = sample_cfg(model_dir, tmp_path / str(n), build=["pretrain"], num_proc=n)
        summaries[n] = run(cfg)["pretrain"]
    for name in ("train.arrow", "eval.arrow"):
        assert (tmp_path / "1/pretrain" / name).read_bytes() == \
            (tmp_path / "2/pretrain" / name).read_bytes(), name
    timing = {"seconds", "tokens_per_s", "num_proc"}
    assert summaries[2]["num_proc"] == 2
    assert ({k: v for k, v in summaries[1].items() if k not in timing}
            == {k: v for k, v in summaries[2].items() if k not in timing})


def test_a_set_prepared_in_the_old_format_is_a_clear_error(model_dir, tmp_path):
    from icae.data.prepared import read_records
    from icae.training.examples import load_records

    cfg = sample_cfg(model_dir, tmp_path / "p", build=["squad"])
    old = tmp_path / "p" / "squad"
    old.mkdir(parents=True)
    (old / "train.jsonl").write_text('{"id": "q"}\n')
    with pytest.raises(DataError, match=rf"{old}: prepared by an older version \(train\.jsonl"
                                        r", JSONL\).*rerun `python -m icae prepare-data`"):
        load_records(cfg, "squad", "train")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'p' / 'repoqa'}: prepared data "
                                                r"set missing \(eval\.arrow.*prepare-data"):
        read_records(tmp_path / "p" / "repoqa" / "eval.arrow")
