"""``icae evaluate`` end to end on tiny random models: every task, both model types, both
baselines, checkpoints, and bad inputs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from icae.config import load_config
from icae.evaluation.policy import ContextPolicy
from icae.evaluation.run import evaluate, output_dir
from icae.evaluation.summary import CSV_COLUMNS
from icae.tasks import TASKS

TASK_METRICS = {name: task.metrics for name, task in TASKS.items()}

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "A memory slot holds a summary of the context.",
]
NEEDLE = "def function(x):\n    return x + 1"


def _write_split(folder: Path, rows: list[dict], split: str = "eval") -> None:
    """A prepared split as prepare-data writes it."""
    from icae.data.prepared import split_path, write_records

    write_records(split_path(folder, split), rows)


def _trajectory(i: int) -> dict:
    msg = lambda role, content, compress=False: {"role": role, "content": content,
                                                 "compress": compress}
    return {"id": f"t{i}", "cut": {"turns": 3}, "messages": [
        msg("system", "You are an agent."),
        msg("user", "Start the task."),
        msg("assistant", "ok"),
        msg("user", TEXTS[i] + " " + TEXTS[(i + 1) % 3], True),
        msg("assistant", "run x"),
        msg("user", TEXTS[(i + 2) % 3], True),
        msg("assistant", "done."),
        msg("user", "short", True),  # below min_compress_len when that is set
        msg("assistant", "bye"),
    ]}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from icae.testing import save_tiny_model_dir, tiny_tokenizer

    root = tmp_path_factory.mktemp("evaluate")
    model_dir = save_tiny_model_dir(root / "model", hidden_size=32, layers=1)
    tok = tiny_tokenizer()
    data = root / "prepared"
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    _write_split(data / "pretrain", [
        {"id": f"p{i}", "task": "ae" if i % 2 == 0 else "lm", "context_ids": ids(t),
         "continuation_ids": ids("Alice was"), "source": "fixture"}
        for i, t in enumerate(TEXTS)])
    _write_split(data / "squad", [
        {"id": f"q{i}", "title": "T", "context": t, "question": "Who was tired?",
         "answers": ["Alice", "alice"]} for i, t in enumerate(TEXTS)])
    _write_split(data / "repoqa", [
        {"id": f"r{i}", "language": "python", "repo": "demo", "needle_name": "function",
         "context": f"{NEEDLE}\n\n# {t}\n", "description": "Adds one to x.",
         "needle_code": NEEDLE, "position_ratio": r, "context_tokens": 40}
        for i, (t, r) in enumerate(zip(TEXTS, (0.1, 0.5, 0.9)))])
    _write_split(data / "trajectories", [_trajectory(i) for i in range(2)])
    return {"root": root, "model_dir": model_dir, "data": data}


def make_cfg(env, out: Path, *overrides: str):
    return load_config(None, [
        f"model.model_dir={env['model_dir']}", "model.mem_size=4",
        "model.mean_compression_rate=2", "model.lora_r=4", "model.lora_alpha=8",
        f"data.prepared_dir={env['data']}", f"output_root={out}", "evaluation.batch_size=2",
        "evaluation.max_new_tokens=4", "evaluation.max_new_tokens_by_task={repoqa: 4}",
        "evaluation.progress=false", *overrides])


def read_outputs(directory: Path) -> tuple[list[dict], list[dict], dict]:
    preds = [json.loads(line) for line in (directory / "predictions.jsonl").read_text()
             .splitlines()]
    with open(directory / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((directory / "summary.json").read_text())
    return preds, rows, summary


EXPECTED_ROWS = {"ae": 3, "qa": 3, "repoqa": 3, "trajectories": 6}  # 2 trajectories x 3 turns


@pytest.mark.parametrize("model_type", ["icae", "llm"])
@pytest.mark.parametrize("task", ["ae", "qa", "repoqa", "trajectories"])
def test_evaluate_end_to_end(env, tmp_path, task, model_type):
    cfg = make_cfg(env, tmp_path, f"evaluation.task={task}", f"model.model_type={model_type}",
                   "run_name=r1", "evaluation.variant=v1")
    summary = evaluate(cfg)
    out = tmp_path / "r1" / "eval" / "v1" / task
    assert output_dir(cfg) == out
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "metrics.csv",
                                              "summary.json", "config.yaml"}
    preds, rows, written = read_outputs(out)
    assert written == json.loads(json.dumps(summary))

    # predictions: one line per example, file order
    assert len(preds) == EXPECTED_ROWS[task]
    for p in preds:
        for key in ("id", "prediction", "reference", "metrics", "context_tokens",
                    "memory_tokens", "memory_slots", "compression_rate", "prompt_tokens",
                    "generated_tokens", "timings"):
            assert key in p, key
        assert set(p["timings"]) >= {"compress_s", "generate_s", "latency_s"}
        assert p["context_tokens"] > 0
        assert set(TASK_METRICS[task]) <= set(p["metrics"])
        if model_type == "icae":
            assert 0 < p["memory_slots"] == p["memory_tokens"] < p["context_tokens"] + 4
        else:
            assert p["memory_slots"] == 0 and p["memory_tokens"] == p["context_tokens"]
            assert p["timings"]["compress_s"] == 0.0
    if task == "ae":
        assert [p["id"] for p in preds] == ["p0", "p1", "p2"]
        assert preds[0]["reference"] == TEXTS[0]
        # budget: the reference and its end token, whatever max_new_tokens says
        assert all(p["generated_tokens"] <= p["context_tokens"] + 1 for p in preds)
    else:
        if task == "qa":
            assert preds[0]["references"] == ["Alice", "alice"]
        if task in ("qa", "repoqa"):
            assert all(p["generated_tokens"] <= 4 for p in preds)
    if task == "trajectories":
        assert [(p["trajectory_id"], p["turn"]) for p in preds] == [
            ("t0", 1), ("t0", 2), ("t0", 3), ("t1", 1), ("t1", 2), ("t1", 3)]
        assert preds[0]["reference"] == "run x"
        assert [p["context_tokens"] for p in preds[:3]] == sorted(
            p["context_tokens"] for p in preds[:3])
        for p in preds:
            assert p["teacher_forced_tokens"] >= 2
            assert 0 <= p["metrics"]["tf_token_accuracy"] <= 1
            assert p["metrics"]["tf_loss"] > 0

    # metrics.csv: long format, fixed columns, one description per run
    assert list(rows[0]) == list(CSV_COLUMNS)
    names = {r["metric"] for r in rows}
    assert set(TASK_METRICS[task]) <= names
    assert {"num_examples", "context_tokens_total", "memory_tokens_total",
            "compression_rate", "compress_time_s", "generate_time_s", "latency_s",
            "tokens_per_second"} <= names
    for r in rows:
        assert (r["run"], r["variant"], r["task"], r["model_type"]) == ("r1", "v1", task,
                                                                        model_type)
        assert r["checkpoint"] == ""
        if model_type == "icae":
            assert (r["mem_size"], r["compression_rate"], r["position_layout"]) == (
                "4", "2.0", "epl")
        else:
            assert r["mem_size"] == r["compression_rate"] == r["position_layout"] == ""
    by_name = {r["metric"]: r for r in rows}
    assert int(by_name["num_examples"]["value"]) == len(preds)
    rate = float(by_name["compression_rate"]["value"])
    assert rate > 1 if model_type == "icae" else rate == 1.0
    assert float(by_name["tokens_per_second"]["value"]) > 0
    if task == "repoqa":
        assert "pass@0.8[position_ratio=0.5]" in names
    if task == "trajectories":
        assert {"trajectory_ar_bleu1", "tf_token_accuracy[turn=2]",
                "compression_rate[turn=1]", "num_trajectories"} <= names
        assert by_name["num_trajectories"]["value"] == "2"
    for name in TASK_METRICS[task]:
        assert summary["metrics"][name] is not None
        assert summary["n"][name] == len(preds)


def test_truncate_baseline_uses_icae_budget(env, tmp_path, tiny_tok):
    common = ("evaluation.task=trajectories", "model.min_compress_len=8")
    icae = evaluate(make_cfg(env, tmp_path / "icae", *common))
    trunc = evaluate(make_cfg(env, tmp_path / "trunc", *common, "model.model_type=llm",
                              "evaluation.baseline=truncate"))
    full = evaluate(make_cfg(env, tmp_path / "full", *common, "model.model_type=llm"))
    p_icae, _, _ = read_outputs(Path(icae["output_dir"]))
    p_trunc, rows, _ = read_outputs(Path(trunc["output_dir"]))
    p_full, _, _ = read_outputs(Path(full["output_dir"]))
    for a, b, c in zip(p_icae, p_trunc, p_full):
        assert a["context_tokens"] == b["context_tokens"] == c["context_tokens"]
        # same budget as ICAE (memory slots + the short observation it keeps as text)
        assert b["memory_tokens"] == a["memory_tokens"] < c["memory_tokens"]
        assert b["prompt_tokens"] < c["prompt_tokens"]
        assert b["memory_slots"] == 0
    # turn 3 has the short observation that neither compresses nor truncates
    short = len(tiny_tok("short", add_special_tokens=False)["input_ids"])
    assert 0 < short < 8
    assert p_icae[2]["memory_tokens"] == p_icae[2]["memory_slots"] + short
    assert trunc["metrics"]["compression_rate"] == pytest.approx(
        icae["metrics"]["compression_rate"])
    assert {(r["baseline"], r["mem_size"], r["compression_rate"], r["position_layout"])
            for r in rows} == {("truncate", "4", "2.0", "")}


@pytest.mark.parametrize("task", ["qa", "repoqa"])
def test_no_context_baseline(env, tmp_path, task):
    base = evaluate(make_cfg(env, tmp_path / "full", f"evaluation.task={task}",
                             "model.model_type=llm", "evaluation.num_samples=1"))
    none = evaluate(make_cfg(env, tmp_path / "none", f"evaluation.task={task}",
                             "model.model_type=llm", "evaluation.baseline=no_context",
                             "evaluation.num_samples=1"))
    (p_base,), _, _ = read_outputs(Path(base["output_dir"]))
    (p_none,), rows, _ = read_outputs(Path(none["output_dir"]))
    assert p_none["memory_tokens"] == 0 and p_none["compression_rate"] is None
    assert p_none["context_tokens"] == p_base["context_tokens"] > 0
    assert p_none["prompt_tokens"] < p_base["prompt_tokens"] - p_base["context_tokens"] + 3
    assert none["metrics"]["compression_rate"] is None
    by_name = {r["metric"]: r for r in rows}
    assert by_name["compression_rate"]["value"] == ""
    assert by_name["memory_tokens_total"]["value"] == "0"


def test_context_policy_budgets():
    from icae.config import ModelConfig

    cfg = ModelConfig(model_type="llm", mem_size=4, mean_compression_rate=2.0,
                      min_compress_len=3)
    trunc = ContextPolicy(cfg, "truncate")
    # ceil(L / 8) segments of n tokens, min(4, ceil(n / 2)) slots each (never more than
    # the context); contexts shorter than min_compress_len stay whole
    assert [trunc.visible(n) for n in (0, 2, 3, 5, 8, 9, 17)] == [0, 2, 2, 3, 4, 5, 9]
    from icae.models.templates import Context, Text

    pieces = [Text((1, 2)), Context(tuple(range(10, 27))), Context((5, 6)), Text((3,))]
    assert trunc.apply(pieces) == [Text((1, 2)), Context(tuple(range(10, 19))),
                                   Context((5, 6)), Text((3,))]
    assert ContextPolicy(cfg, "no_context").apply(pieces) == [Text((1, 2)), Text((3,))]
    icae = ContextPolicy(ModelConfig(mem_size=4, mean_compression_rate=2.0,
                                     min_compress_len=3), "none")
    assert icae.account([17, 2]) == {"context_tokens": 19, "memory_tokens": 11,
                                     "memory_slots": 9, "compression_rate": 19 / 11,
                                     "contexts": 2, "contexts_compressed": 1}


def test_policy_matches_model_memory_slots(tiny_tok):
    from tests.conftest import make_icae

    model = make_icae(tiny_tok, mem_size=4, rate=1.5, min_compress_len=5)
    policy = ContextPolicy(model.cfg)
    for n in (0, 1, 4, 5, 6, 7, 12, 13, 40):
        expected = model.num_memory_slots(n) if model.compresses(n) else 0
        assert policy.memory_slots(n) == expected
        assert policy.compresses(n) == model.compresses(n)
        # the truncate baseline keeps exactly as many tokens as ICAE has slots
        llm_cfg = dataclasses.replace(model.cfg, model_type="llm")
        truncate = ContextPolicy(llm_cfg, "truncate")
        assert truncate.visible(n) == (min(n, expected) if model.compresses(n) else n)


def test_policy_calls_the_models_slot_rule(tiny_tok, monkeypatch):
    """The truncate budget is ICAE.num_memory_slots itself, not a copy of its formula."""
    from icae.config import ModelConfig
    from icae.models.icae import ICAE

    monkeypatch.setattr(ICAE, "num_memory_slots", lambda self, n: n // 3)
    cfg = ModelConfig(model_type="llm", mem_size=4, mean_compression_rate=2.0)
    assert [ContextPolicy(cfg, "truncate").visible(n) for n in (3, 9, 30)] == [1, 3, 10]


def test_policy_stand_in_follows_slot_rule():
    """Without an ICAE the stand-in still carries model.slot_rule: fixed gives every
    compressed segment mem_size slots, proportional ceil(n / rate)."""
    from icae.config import ModelConfig
    from icae.models import positions as P

    for rule in ("proportional", "fixed"):
        cfg = ModelConfig(model_type="llm", mem_size=4, mean_compression_rate=2.0,
                          min_compress_len=3, slot_rule=rule)
        policy = ContextPolicy(cfg, "truncate")
        for n in (0, 2, 3, 5, 8, 17):
            assert policy.memory_slots(n) == P.context_slots(n, 4, 2.0, rule, 3)
    fixed = ContextPolicy(ModelConfig(mem_size=4, mean_compression_rate=2.0,
                                      min_compress_len=3, slot_rule="fixed"))
    prop = ContextPolicy(ModelConfig(mem_size=4, mean_compression_rate=2.0,
                                     min_compress_len=3))
    assert fixed.memory_slots(5) == 4 and prop.memory_slots(5) == 3


def test_effective_and_configured_rates_are_recorded(env, tmp_path):
    """A context shorter than a segment gets fewer tokens per slot than configured; the
    effective rate measured on the data is written beside the configured one."""
    for model_type in ("icae", "llm"):
        cfg = make_cfg(env, tmp_path / model_type, "evaluation.task=qa",
                       f"model.model_type={model_type}", "model.mem_size=16")
        summary = evaluate(cfg)
        preds, rows, _ = read_outputs(Path(summary["output_dir"]))
        ctx = sum(p["context_tokens"] for p in preds)
        mem = sum(p["memory_tokens"] for p in preds)
        assert summary["compression_rate_effective"] == pytest.approx(ctx / mem)
        for r in rows:
            assert float(r["compression_rate_effective"]) == pytest.approx(ctx / mem)
        if model_type == "icae":
            assert summary["compression_rate_configured"] == 2.0
            assert {r["compression_rate_configured"] for r in rows} == {"2.0"}
            assert ctx / mem <= 2.0  # short contexts: at most the configured rate
            assert summary["metrics"]["contexts_compressed_fraction"] == 1.0
        else:
            assert summary["compression_rate_configured"] is None
            assert {r["compression_rate_configured"] for r in rows} == {""}
            assert ctx / mem == 1.0


def test_teacher_forced_scores_match_model_loss(tiny_tok):
    from icae.evaluation.run import teacher_forced_scores
    from icae.tasks import Example
    from icae.models.base import collate
    from icae.models.templates import context_slot
    from tests.conftest import make_icae

    model = make_icae(tiny_tok).eval()
    pb = model.prompts
    examples = []
    for text, answer in ((TEXTS[0], "ok then"), (TEXTS[1] + TEXTS[2], "run x now please")):
        msgs = [{"role": "user", "content": context_slot(0)}]
        pieces = pb.chat(msgs, [pb.encode(text)], answer=answer)
        n_labels = model.encode(pieces).num_target_tokens
        examples.append(Example(id=answer, prompt=[], reference=answer, max_new_tokens=1,
                                context_lengths=[], teacher_forced=pieces, tf_tokens=n_labels))
    got = teacher_forced_scores(model, examples, batch_size=2, progress=False)
    with torch.no_grad():
        for ex, res in zip(examples, got):
            batch = collate([model.encode(ex.teacher_forced)], model.pad_id)
            assert res["metrics"]["tf_loss"] == pytest.approx(float(model(**batch)["loss"]),
                                                              abs=1e-4)
            assert res["tokens"] == ex.tf_tokens
            hidden = model(**{k: v for k, v in batch.items() if k != "labels"})[
                "hidden_states"]
            logits = model.lm_head(hidden[0, :-1])
            y = batch["labels"][0, 1:]
            sel = y != -100
            acc = (logits[sel].argmax(-1) == y[sel]).float().mean()
            assert res["metrics"]["tf_token_accuracy"] == pytest.approx(float(acc))


def test_checkpoint_num_samples_and_determinism(env, tmp_path):
    from icae.models import build_model
    from icae.models.checkpoint import save_checkpoint

    cfg = make_cfg(env, tmp_path / "a", "evaluation.task=qa", "evaluation.num_samples=2",
                   "evaluation.progress=true")
    model = build_model(cfg.model)
    with torch.no_grad():
        model.extra_embeddings.mul_(2.0)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    runs = []
    for name in ("a", "b"):
        c = make_cfg(env, tmp_path / name, "evaluation.task=qa", "evaluation.num_samples=2",
                     f"evaluation.checkpoint={ckpt}",
                     f"evaluation.output_dir={tmp_path / name / 'out'}")
        summary = evaluate(c)
        assert summary["checkpoint"] == str(ckpt)
        assert summary["checkpoint_meta"]["mem_size"] == 4
        preds, rows, _ = read_outputs(tmp_path / name / "out")
        assert {r["checkpoint"] for r in rows} == {str(ckpt)}
        runs.append(preds)
    assert [p["id"] for p in runs[0]] == ["q0", "q1"]  # first N in file order
    assert [p["prediction"] for p in runs[0]] == [p["prediction"] for p in runs[1]]


# ---------------------------------------------------------------------------------------
# Bad inputs


def test_missing_checkpoint(env, tmp_path):
    missing = tmp_path / "nope"
    cfg = make_cfg(env, tmp_path, f"evaluation.checkpoint={missing}")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        evaluate(cfg)
    (tmp_path / "empty").mkdir()
    cfg = make_cfg(env, tmp_path, f"evaluation.checkpoint={tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        evaluate(cfg)


def test_mismatched_checkpoint(env, tmp_path):
    from icae.models import build_model
    from icae.models.checkpoint import save_checkpoint

    model = build_model(make_cfg(env, tmp_path).model)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="model.mem_size=4, but model.mem_size=8 here"):
        evaluate(make_cfg(env, tmp_path, f"evaluation.checkpoint={ckpt}", "model.mem_size=8"))
    with pytest.raises(ValueError, match="model.model_type='icae', but model.model_type="):
        evaluate(make_cfg(env, tmp_path, f"evaluation.checkpoint={ckpt}",
                          "model.model_type=llm"))
    # A different layout or rate changes what the memory means: an error, not a warning.
    with pytest.raises(ValueError, match="position_layout='epl', but model.position_layout="
                                         "'linspace' here; set model.position_layout=epl"):
        evaluate(make_cfg(env, tmp_path, f"evaluation.checkpoint={ckpt}",
                          "model.position_layout=linspace"))
    with pytest.raises(ValueError, match="mean_compression_rate=2.0, but"):
        evaluate(make_cfg(env, tmp_path, f"evaluation.checkpoint={ckpt}",
                          "model.mean_compression_rate=4"))


@pytest.mark.parametrize("rows, error, match", [
    ([], ValueError, "squad/eval.arrow: the evaluation data set is empty"),
    ([{"id": 1}], ValueError, "eval.arrow: record 1 lacks field.*context, question"),
    ("old", ValueError, r"squad: prepared by an older version \(eval\.jsonl.*rerun"),
    ("garbage", ValueError, r"squad/eval.arrow: not a readable prepared Arrow file"),
    (None, FileNotFoundError, "squad/eval.arrow: evaluation data for task 'qa' is missing"),
])
def test_bad_data(env, tmp_path, rows, error, match):
    data = tmp_path / "prepared"
    (data / "squad").mkdir(parents=True)
    if rows == "old":
        (data / "squad/eval.jsonl").write_text('{"id": 1}\n')
    elif rows == "garbage":
        (data / "squad/eval.arrow").write_text('{"id": 1}\n')
    elif rows is not None:
        _write_split(data / "squad", rows)
    cfg = make_cfg(env, tmp_path, f"data.prepared_dir={data}")
    with pytest.raises(error, match=match):
        evaluate(cfg)
    assert not (tmp_path / "run").exists()  # nothing written


def test_trajectories_without_turns(env, tmp_path):
    data = tmp_path / "prepared"
    _write_split(data / "trajectories", [{"id": "x", "messages": [
        {"role": "user", "content": "hi", "compress": False},
        {"role": "assistant", "content": "hello", "compress": False}]}])
    cfg = make_cfg(env, tmp_path, f"data.prepared_dir={data}", "evaluation.task=trajectories")
    with pytest.raises(ValueError, match="at least two assistant messages"):
        evaluate(cfg)


def test_cli_reports_errors(env, tmp_path, capsys):
    from icae.cli import main

    args = ["evaluate", f"model.model_dir={env['model_dir']}", "model.mem_size=4",
            "model.lora_r=4", f"data.prepared_dir={tmp_path / 'none'}",
            f"output_root={tmp_path}"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    assert "icae evaluate: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(args + ["evaluation.baseline=truncate"])
    assert exc.value.code == 2
    assert "set model.model_type=llm" in capsys.readouterr().err


def test_pretrained_only_checkpoint_gets_no_ft_marker(env, tmp_path):
    """A checkpoint that never trained [FT] is evaluated on QA with [LM] in its place; one
    that never trained [AE] cannot be evaluated on autoencoding."""
    from icae.models import build_model
    from icae.models.checkpoint import save_checkpoint

    cfg = make_cfg(env, tmp_path, "evaluation.task=qa")
    model = build_model(cfg.model)
    pre = save_checkpoint(model, tmp_path / "pre", extra={"stage": "pretrain",
                                                          "trained_markers": ["ae", "lm"]})
    summary = evaluate(make_cfg(env, tmp_path, "evaluation.task=qa",
                                f"evaluation.checkpoint={pre}"))
    assert summary["trained_markers"] == ["ae", "lm"] and summary["prompt_markers"] == ["lm"]
    fine = save_checkpoint(model, tmp_path / "ft", extra={"stage": "finetune"})  # old format
    summary = evaluate(make_cfg(env, tmp_path, "evaluation.task=qa",
                                f"evaluation.checkpoint={fine}"))
    assert summary["prompt_markers"] == ["ft"]
    lm_only = save_checkpoint(model, tmp_path / "lm", extra={"trained_markers": ["lm"]})
    with pytest.raises(ValueError, match=r"evaluation\.checkpoint=.*never trained the \[AE\]"):
        evaluate(make_cfg(env, tmp_path, "evaluation.task=ae",
                          f"evaluation.checkpoint={lm_only}"))


# ---------------------------------------------------------------------------------------
# Outputs: all or nothing, protected when read-only, checked before generating


def test_failed_write_leaves_the_previous_outputs_whole(env, tmp_path, monkeypatch):
    import icae.evaluation.run as R

    out = tmp_path / "out"
    cfg = make_cfg(env, tmp_path, "evaluation.task=qa", f"evaluation.output_dir={out}")
    evaluate(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(R, "metrics_csv", lambda *a, **k: 1 / 0)  # fails after predictions
    with pytest.raises(ZeroDivisionError):
        evaluate(make_cfg(env, tmp_path, "evaluation.task=qa", f"evaluation.output_dir={out}",
                          "evaluation.num_samples=1"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_read_only_outputs_are_refused_unless_overwrite(env, tmp_path, monkeypatch):
    import icae.evaluation.run as R

    out = tmp_path / "out"
    cfg = make_cfg(env, tmp_path, "evaluation.task=qa", f"evaluation.output_dir={out}")
    evaluate(cfg)
    (out / "metrics.csv").chmod(0o444)
    called = []
    real = R.generate_examples
    monkeypatch.setattr(R, "generate_examples", lambda *a, **k: called.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=r"read-only outputs \(metrics.csv\).*--overwrite"):
        evaluate(cfg)
    assert not called  # refused before any generation
    evaluate(cfg, overwrite=True)
    assert called and (out / "metrics.csv").stat().st_mode & 0o200


def test_unwritable_output_fails_before_generation(env, tmp_path, monkeypatch):
    import icae.evaluation.run as R

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(R, "generate_examples", lambda *a, **k: pytest.fail("generated"))
    cfg = make_cfg(env, tmp_path, "evaluation.task=qa",
                   f"evaluation.output_dir={tmp_path / 'file' / 'out'}")
    with pytest.raises(ValueError, match="file/out cannot be written"):
        evaluate(cfg)
