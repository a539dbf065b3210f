"""The samples shipped in data/samples/ load with the project's own loaders."""

from pathlib import Path

from icae.config import TextSource
from icae.data.corpus import iter_source
from icae.data.repoqa import load_release
from icae.data.squad import load_squad
from icae.data.trajectories import load_trajectories

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
FILES = ["pretrain/train.jsonl.gz", "pretrain/eval.jsonl.gz", "squad/train-v1.1-sample.json",
         "squad/dev-v1.1-sample.json", "trajectories/train.jsonl.gz",
         "trajectories/eval.jsonl.gz", "repoqa/train.jsonl.gz", "repoqa/eval.jsonl.gz"]


def test_files_documented_and_small():
    readme = (SAMPLES / "README.md").read_text()
    for name in FILES:
        assert (SAMPLES / name).is_file(), name
        assert f"`{name}`" in readme, name
    for lic in ("repoqa/LICENSE-click.txt", "repoqa/LICENSE-jinja2.txt",
                "trajectories/LICENSE-mini-swe-agent.txt"):
        assert (SAMPLES / lic).is_file() and lic in readme
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 1_500_000


def test_samples_load_and_are_disjoint():
    train = list(iter_source(TextSource(path=str(SAMPLES / "pretrain/train.jsonl.gz"))))
    ev = list(iter_source(TextSource(path=str(SAMPLES / "pretrain/eval.jsonl.gz"))))
    assert len(train) >= 20 and len(ev) >= 4
    assert sum(len(d.text) for d in train) > 200_000
    assert not {d.id for d in train} & {d.id for d in ev}

    sq_train = load_squad(SAMPLES / "squad/train-v1.1-sample.json")
    sq_dev = load_squad(SAMPLES / "squad/dev-v1.1-sample.json")
    assert 180 <= len(sq_train) + len(sq_dev) <= 260
    assert not {r["context"] for r in sq_train} & {r["context"] for r in sq_dev}

    tr = load_trajectories(SAMPLES / "trajectories/train.jsonl.gz")
    tv = load_trajectories(SAMPLES / "trajectories/eval.jsonl.gz")
    assert len(tr) + len(tv) == 10

    rq_train = load_release(SAMPLES / "repoqa/train.jsonl.gz")
    rq_eval = load_release(SAMPLES / "repoqa/eval.jsonl.gz")
    assert {t["repo"].split("==")[0] for t in rq_train} == {"click"}
    assert {t["repo"].split("==")[0] for t in rq_eval} == {"jinja2"}
