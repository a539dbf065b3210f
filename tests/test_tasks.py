"""The task registry: one module per benchmark, and a new benchmark flows through every
step (data preparation, training examples, evaluation, tables) from its registration
alone. The toy here is what docs/developer/adding-a-benchmark.md builds: a long-document
QA set that reuses the QA prompt and scores, with its own data, names and headline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from icae import tasks
from icae.config import SquadDataConfig
from icae.tasks.base import PreparedData
from icae.tasks.squad import SquadQA
from tests.conftest import REPO
from tests.test_evaluate import TEXTS, env, make_cfg, read_outputs  # noqa: F401 (fixture)

DOCS = [{"id": f"d{i}", "context": " ".join([t] * 3), "question": "Who was tired?",
         "answers": ["Alice"]} for i, t in enumerate(TEXTS)]


class LongDocQA(SquadQA):
    def configured(self, data_cfg) -> bool:
        return True

    def prepare(self, cfg, tokenizer) -> PreparedData:
        return PreparedData(train=DOCS[:2], eval=DOCS[2:], summary={"documents": len(DOCS)})

    def describe_prepared(self, summary: dict) -> str:
        return f"; {summary['documents']} documents"


TOY = LongDocQA(
    name="longqa", dataset="longdocs", title="LongQA", caption="Long-document QA (toy)",
    dataset_title="long documents", data_inputs="documents",
    eval_fields=("context", "question", "answers"),
    metrics=("exact_match", "f1"), headline=("f1",),
    units={"exact_match": "percent", "f1": "percent"},
    percent=frozenset({"exact_match", "f1"}), budgeted=True, default_max_new_tokens=3)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, TOY.name, TOY)
    return TOY


def test_the_registry_holds_the_four_benchmarks_in_table_order():
    assert list(tasks.TASKS) == ["ae", "qa", "repoqa", "trajectories"]
    assert tasks.datasets() == ("pretrain", "squad", "repoqa", "trajectories")
    assert tasks.task_of_dataset() == {"squad": "qa", "repoqa": "repoqa",
                                       "trajectories": "trajectories"}
    assert tasks.by_dataset("squad") is tasks.get("qa")
    with pytest.raises(ValueError, match="unknown task 'nope'; expected one of ae, qa"):
        tasks.get("nope")
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        tasks.by_dataset("nope")
    for task in tasks.TASKS.values():
        assert set(task.headline) <= set(task.metrics), task.name
        assert task.percent <= set(task.metrics), task.name


def test_the_registry_imports_nothing_heavy():
    """icae.config reads the registry while it is imported: the task modules must not
    import the config, the models or torch at import time."""
    code = ("import sys, icae.tasks; print(sorted(m for m in sys.modules if m == 'torch' "
            "or m.startswith('icae.') and not m.startswith('icae.tasks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_registered_task_has_its_names_everywhere(toy):
    assert tasks.datasets()[-1] == "longdocs"
    assert tasks.finetune_datasets()[-1] == "longdocs"
    assert tasks.dataset_of_task()["longqa"] == "longdocs"
    assert tasks.task_of_dataset()["longdocs"] == "longqa"
    assert tasks.headline_metrics()["longqa"] == ["f1"]
    assert ("longqa", "f1") in tasks.percent_metrics()
    assert tasks.title("longqa") == "LongQA" and tasks.title("other") == "other"
    from icae.evaluation.tables import metric_info, variant_name

    assert metric_info("longqa", "f1").factor == 1.0  # already percent
    assert variant_name("icae-ft-longdocs") == "ICAE, fine-tuned (long documents)"


def test_a_registered_task_flows_from_data_to_tables(toy, env, tmp_path):
    from icae.data.prepare import configured_sets, prepare_set
    from icae.evaluation.aggregate import aggregate
    from icae.evaluation.run import evaluate
    from icae.models import build_model
    from icae.training.examples import encode_records, load_records

    cfg = make_cfg(env, tmp_path, f"data.prepared_dir={tmp_path / 'prepared'}",
                   "run_name=toy", "evaluation.variant=base", "model.model_type=llm")
    cfg.data.longdocs = SquadDataConfig()  # its config section
    cfg.data.build.append("longdocs")
    assert configured_sets(cfg)[-1] == "longdocs"

    # data preparation: the task's own builder, the common folder layout and summary
    summary = prepare_set(cfg, "longdocs", tokenizer_fn=lambda: None)
    assert summary["files"] == {"train.arrow": 2, "eval.arrow": 1}
    assert summary["documents"] == 3
    written = json.loads((tmp_path / "prepared/longdocs/summary.json").read_text())
    assert written["set"] == "longdocs" and written["documents"] == 3

    # training examples: the task's training prompt, through the common encoder
    model = build_model(cfg.model)
    examples, stats = encode_records(model, cfg, "longdocs",
                                     load_records(cfg, "longdocs", "train"), 512)
    assert len(examples) == stats.examples == 2

    # evaluation: its examples, scores, percent scale, units and budget
    cfg.evaluation.task = "longqa"
    result = evaluate(cfg, model=model)
    out = tmp_path / "toy" / "eval" / "base" / "longqa"
    preds, rows, summary = read_outputs(out)
    assert result["task"] == summary["task"] == "longqa"
    assert summary["dataset"] == "longdocs"
    assert summary["generation"]["max_new_tokens"] == 3
    assert set(summary["units"]) >= {"exact_match", "f1", "compression_rate"}
    assert [r["metric"] for r in rows[:3]] == ["num_examples", "exact_match", "f1"]
    assert {r["task"] for r in rows} == {"longqa"} and {r["dataset"] for r in rows} == {
        "longdocs"}
    assert len(preds) == 1 and set(preds[0]["metrics"]) == {"exact_match", "f1", "bleu1"}

    # tables: its headline, caption and title
    paths = aggregate([out / "metrics.csv"], tmp_path / "tables", run_name="toy",
                      metrics=tasks.headline_metrics())
    table = paths["longqa.md"].read_text()
    assert "Long-document QA (toy) (1 examples)" in table
    assert "F1 ↑" in table and "EM ↑" not in table  # only the headline
    assert "LongQA F1" in paths["summary.md"].read_text()


def test_the_workflow_schema_names_the_registered_tasks_and_data_sets():
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]
    wf = props["workflow"]["properties"]
    assert props["data"]["properties"]["build"]["items"]["enum"] == list(tasks.datasets())
    assert props["evaluation"]["properties"]["task"]["enum"] == list(tasks.TASKS)
    assert wf["pretrained_tasks"]["items"]["enum"] == list(tasks.TASKS)
    assert wf["finetune_datasets"]["items"]["enum"] == list(tasks.finetune_datasets())
    training = schema["$defs"]["training"]["properties"]
    assert training["dataset"]["enum"] == list(tasks.finetune_datasets())
