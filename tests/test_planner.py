"""The experiment planner (icae/planner.py) without Snakemake: names and their parsing,
branches, variants, evaluations, paths, job configs, lineage and the command line.
tests/test_workflow.py checks the same plan through ``snakemake -n``."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from icae import planner as P
from icae.config import ICAE_ONLY_MODEL_KEYS, load_config, parse_override, to_dict
from icae.planner import BranchKey, Plan, PlanError, Variant

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def _with_defaults(config: dict) -> dict:
    """The config as Snakemake's ``validate`` leaves it: valid, defaults filled in (the
    jsonschema FAQ's default-setting validator, which Snakemake uses)."""
    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        for name, sub in properties.items():
            if isinstance(instance, dict) and "default" in sub:
                instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    config = copy.deepcopy(config)
    cls(SCHEMA).validate(config)
    return config


def make_plan(**sections) -> Plan:
    """A plan of a small config: ``sections`` replace or extend its sections
    (``workflow={"sweep": ...}`` updates the workflow section)."""
    config = {"run_name": "t", "seed": 42,
              "model": {"mem_size": 16, "mean_compression_rate": 4,
                        "max_encoder_tokens": 256},
              "workflow": {"env": {"WANDB_MODE": "disabled"}}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return Plan(_with_defaults(config), repo_root="/checkout", launcher_python="/bin/py")


# ---------------------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize("key, name", [
    (BranchKey("icae", 42, 16, 4.0, "epl"), "m16-r4-epl-s42"),
    (BranchKey("icae", -1, 8, 2.5, "default"), "m8-r2.5-default-s-1"),
    (BranchKey("icae", 0, 128, 1e6, "linspace"), "m128-r1e+06-linspace-s0"),
    (BranchKey("budget", 7, 16, 4.0), "m16-r4-s7"),
    (BranchKey("llm", 42), "llm-s42"),
])
def test_branch_names_round_trip(key, name):
    assert P.branch_name(key) == name
    assert P.parse_branch(name) == key


@pytest.mark.parametrize("name", ["", "llm", "llm-s", "m16-r4", "m16-r4-foo-s1", "m16-r4-s1x",
                                  "xm16-r4-s1", "model", "tables", "eval"])
def test_other_names_are_not_branches(name):
    assert P.parse_branch(name) is None


def test_branch_name_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown branch kind 'gpu'"):
        P.branch_name(BranchKey("gpu", 1))


def test_variant_names_round_trip():
    assert list(P.VARIANTS) == [
        "base", "no_context", "truncate", "icae-pretrained",
        "icae-ft-squad", "llm-ft-squad", "icae-ft-repoqa", "llm-ft-repoqa",
        "icae-ft-trajectories", "llm-ft-trajectories"]
    for name, variant in P.VARIANTS.items():
        assert P.variant_name(variant) == name
        assert P.parse_variant(name) == variant
    # Any data set parses (the tables rank fine-tunes on sets the workflow lacks).
    assert P.parse_variant("llm-ft-hotpotqa") == Variant("llm", "hotpotqa")
    assert P.parse_variant("icae-ft-") is None
    assert P.parse_variant("bert-ft-squad") is None
    assert P.parse_variant("icae-ft") is None  # a summary-table row, not a variant
    with pytest.raises(ValueError, match="no such variant"):
        P.variant_name(Variant("icae", baseline="truncate"))


@pytest.mark.parametrize("name, kind, source", [
    ("base", "llm", None), ("no_context", "llm", None), ("truncate", "budget", None),
    ("icae-pretrained", "icae", "pretrain"),
    ("icae-ft-squad", "icae", ("finetune", "squad", "icae")),
    ("llm-ft-repoqa", "llm", ("finetune", "repoqa", "llm")),
])
def test_variant_branch_kind_and_source(name, kind, source):
    variant = P.VARIANTS[name]
    assert (variant.branch_kind, variant.source) == (kind, source)


def test_output_paths_round_trip():
    run = "results/t"
    key = BranchKey("icae", 42, 16, 4.0, "epl")
    branch = P.branch_name(key)
    place = P.parse_output_path(f"{P.eval_dir(run, branch, 'icae-ft-squad', 'qa')}/metrics.csv")
    assert place == P.OutputPlace(branch, key, "evaluate", variant="icae-ft-squad", task="qa")
    place = P.parse_output_path(f"{P.pretrain_dir(run, branch)}/log.csv")
    assert place == P.OutputPlace(branch, key, "pretrain")
    place = P.parse_output_path(f"/abs/{P.finetune_dir(run, 'llm-s3', 'squad', 'llm')}/log.csv")
    assert place == P.OutputPlace("llm-s3", BranchKey("llm", 3), "finetune",
                                  finetune="squad-llm")
    # A bare branch name as the path's first part counts too.
    assert P.parse_output_path("m8-r2-s1/eval/truncate/qa/metrics.csv").key == \
        BranchKey("budget", 1, 8, 2.0)
    for path in ("results/t/tables/metrics_long.csv", "metrics.csv",
                 "results/t/notabranch/eval/base/qa/metrics.csv",
                 "results/t/llm-s1/eval/base/metrics.csv"):
        assert P.parse_output_path(path) is None, path


# ---------------------------------------------------------------------------------------
# Branches and evaluations.


def test_default_plan_branches_and_evaluations():
    plan = make_plan()
    assert {name: b.kind for name, b in plan.branches.items()} == {
        "m16-r4-epl-s42": "icae", "m16-r4-s42": "budget", "llm-s42": "llm"}
    for name, b in plan.branches.items():
        assert P.parse_branch(name) == b.key
    assert len(plan.evaluations) == 19
    assert plan.evaluations[:2] == [("m16-r4-epl-s42", "icae-pretrained", "ae"),
                                    ("m16-r4-epl-s42", "icae-pretrained", "qa")]
    assert ("m16-r4-s42", "truncate", "repoqa") in plan.evaluations
    assert ("llm-s42", "llm-ft-trajectories", "trajectories") in plan.evaluations
    # Every evaluation's variant is evaluated in a branch of its kind.
    for branch, variant, _ in plan.evaluations:
        assert plan.branches[branch].kind == P.VARIANTS[variant].branch_kind
    assert plan.paper_table_names() == ["ae", "qa", "repoqa", "trajectories", "summary"]
    assert plan.metrics_files()[0] == "results/t/m16-r4-epl-s42/eval/icae-pretrained/ae/metrics.csv"
    assert plan.training_logs() == [
        "results/t/m16-r4-epl-s42/pretrain/final/log.csv",
        *(f"results/t/m16-r4-epl-s42/finetune/{d}-icae/final/log.csv"
          for d in ("squad", "repoqa", "trajectories")),
        *(f"results/t/llm-s42/finetune/{d}-llm/final/log.csv"
          for d in ("squad", "repoqa", "trajectories"))]
    # Branch configs hold the branch's sweep values and model type.
    assert plan.branches["llm-s42"].config["model"]["model_type"] == "llm"
    assert plan.branches["m16-r4-s42"].config["model"]["model_type"] == "llm"
    assert plan.branches["m16-r4-epl-s42"].config["model"]["model_type"] == "icae"


def test_sweep_branches():
    plan = make_plan(workflow={"sweep": {"mem_size": [8, 16], "mean_compression_rate": [2, 4.5],
                                         "position_layout": ["epl", "default"],
                                         "seed": [1, 2]}})
    kinds = [b.kind for b in plan.branches.values()]
    # The budget branch (truncate baseline) is shared by the layouts.
    assert (kinds.count("icae"), kinds.count("budget"), kinds.count("llm")) == (16, 8, 2)
    b = plan.branches["m8-r4.5-default-s2"]
    assert (b.config["model"]["mem_size"], b.config["model"]["mean_compression_rate"],
            b.config["model"]["position_layout"], b.config["seed"]) == (8, 4.5, "default", 2)
    regex = re.compile(plan.branch_regex("icae", "budget", "llm"))
    assert all(regex.fullmatch(name) for name in plan.branches)
    assert not regex.fullmatch("m32-r4-s1")
    assert plan.branch_regex("budget").count("|") == 7


def test_only_some_models_and_baselines():
    plan = make_plan(workflow={"model_types": ["llm"], "baselines": ["base"],
                               "finetune_datasets": ["squad"]})
    assert list(plan.branches) == ["llm-s42"]
    assert plan.evaluations == [("llm-s42", "base", "qa"), ("llm-s42", "llm-ft-squad", "qa")]
    plan = make_plan(workflow={"model_types": ["icae"], "baselines": [],
                               "finetune_datasets": [], "pretrained_tasks": ["ae"]})
    assert list(plan.branches) == ["m16-r4-epl-s42"]
    assert plan.evaluations == [("m16-r4-epl-s42", "icae-pretrained", "ae")]
    assert plan.paper_table_names() == ["ae", "summary"]
    # No branches of a kind: a constraint that matches nothing.
    assert plan.branch_regex("llm") == "(?!x)x"


def test_bad_configs_are_plan_errors():
    with pytest.raises(PlanError, match="workflow.sweep.mean_compression_rate: values must "
                                        "differ"):
        make_plan(workflow={"sweep": {"mean_compression_rate": [4, 4.0000001]}})
    with pytest.raises(PlanError, match=r"invalid config: pretrain.fsdp='full_shard' .*"
                                        r"workflow.gpu.pretrain is 1"):
        make_plan(pretrain={"fsdp": "full_shard"})
    with pytest.raises(PlanError, match=r"invalid config \(config\): model.mem_size: must be "
                                        r"a power of two"):
        make_plan(model={"mem_size": 12})
    # A branch's own values are checked too (a sweep value the model section lacks).
    with pytest.raises(PlanError, match=r"invalid config \(branch m1024-r4-epl-s42\): "
                                        r"model.max_encoder_tokens"):
        make_plan(workflow={"sweep": {"mem_size": [1024]}})


# ---------------------------------------------------------------------------------------
# Job configs and inputs.


def test_job_configs():
    plan = make_plan()
    cfg, _ = plan.job("prepare_data", dataset="squad")
    assert cfg["data"]["build"] == ["squad"]
    assert (cfg["model"]["model_dir"], cfg["data"]["prepared_dir"]) == ("results/t/model",
                                                                        "results/t/data")
    cfg, _ = plan.job("pretrain", branch="m16-r4-epl-s42")
    assert cfg["pretrain"]["output_dir"] == "results/t/m16-r4-epl-s42/pretrain/final"
    assert re.fullmatch(r"results/t/work/m16-r4-epl-s42/pretrain-[0-9a-f]{12}",
                        cfg["pretrain"]["resume_dir"])
    assert cfg["workflow"] == {"untracked_keys": sorted(plan.untracked)}
    cfg, _ = plan.job("finetune", branch="m16-r4-epl-s42", dataset="repoqa", model_type="icae")
    ft = cfg["finetune"]
    assert (ft["dataset"], ft["init_checkpoint"]) == ("repoqa",
                                                      "results/t/m16-r4-epl-s42/pretrain/final")
    assert ft["output_dir"] == "results/t/m16-r4-epl-s42/finetune/repoqa-icae/final"
    assert ft["resume_dir"].startswith("results/t/work/m16-r4-epl-s42/finetune-repoqa-icae-")
    cfg, _ = plan.job("finetune", branch="llm-s42", dataset="squad", model_type="llm")
    assert cfg["finetune"]["init_checkpoint"] is None
    assert (cfg["model"]["model_type"], cfg["model"]["train_decoder"]) == ("llm", False)
    cfg, _ = plan.job("evaluate", branch="m16-r4-s42", variant="truncate", task="qa")
    ev = cfg["evaluation"]
    assert (ev["task"], ev["checkpoint"], ev["baseline"], ev["variant"]) == (
        "qa", None, "truncate", "truncate")
    assert ev["output_dir"] == "results/t/m16-r4-s42/eval/truncate/qa"
    assert cfg["model"]["model_type"] == "llm"
    cfg, _ = plan.job("evaluate", branch="llm-s42", variant="llm-ft-squad", task="qa")
    assert cfg["evaluation"]["checkpoint"] == "results/t/llm-s42/finetune/squad-llm/final"
    cfg, lineage = plan.job("aggregate")
    assert cfg["workflow"] == {"tables": plan.workflow["tables"]} and lineage == {
        "aggregate": plan.workflow["tables"]}


def test_inputs():
    plan = make_plan()
    inputs = plan.finetune_inputs("m16-r4-epl-s42", "squad", "icae")
    assert inputs["train"] == "results/t/data/squad/train.arrow"
    assert inputs["init_weights"] == "results/t/m16-r4-epl-s42/pretrain/final/trained.safetensors"
    assert not any(k.startswith("init_") for k in plan.finetune_inputs("llm-s42", "squad", "llm"))
    inputs = plan.evaluate_inputs("m16-r4-epl-s42", "icae-pretrained", "ae")
    assert inputs["data"] == "results/t/data/pretrain/eval.arrow"
    assert inputs["checkpoint_meta"] == "results/t/m16-r4-epl-s42/pretrain/final/checkpoint.json"
    assert set(plan.evaluate_inputs("llm-s42", "base", "qa")) == {"model", "data"}
    assert set(plan.pretrain_inputs("m16-r4-epl-s42")) == {"model", "train", "eval"}
    # An adopted (or continued) checkpoint is an input: replacing it reruns pretrain.
    adopted = make_plan(pretrain={"init_checkpoint": "checkpoints/x", "max_steps": 0})
    assert adopted.pretrain_inputs("m16-r4-epl-s42")["init_meta"] == "checkpoints/x/checkpoint.json"
    assert plan.local_source_files("squad") == sorted(
        {plan.experiment["data"]["squad"][k] for k in ("train_file", "eval_file")} - {None})


# ---------------------------------------------------------------------------------------
# Lineage: what reruns when a value changes.


def _lineages(plan: Plan) -> dict[tuple, str]:
    jobs = [("prepare_model", {}), ("aggregate", {})]
    jobs += [("prepare_data", {"dataset": d}) for d in P.ALL_DATASETS]
    jobs += [("pretrain", {"branch": b}) for b in plan.branch_names("icae")]
    jobs += [("finetune", {"branch": b, "dataset": d, "model_type": mt})
             for mt, kind in (("icae", "icae"), ("llm", "llm"))
             for b in plan.branch_names(kind) for d in plan.finetune_datasets]
    jobs += [("evaluate", {"branch": b, "variant": v, "task": t}) for b, v, t in plan.evaluations]
    return {(step, *sorted(w.values())): plan.tracked(step, **w) for step, w in jobs}


def _changed(before: Plan, after: Plan) -> set[str]:
    old, new = _lineages(before), _lineages(after)
    assert old.keys() == new.keys()
    return {" ".join(k) for k in old if old[k] != new[k]}


def test_what_each_edit_reruns():
    plan = make_plan()
    same = make_plan(pretrain={"logging_steps": 7, "progress": False},
                     finetune={"report_to": ["wandb"], "save_steps": 3},
                     workflow={"env": {"X": "1"}, "python": "/other/python",
                               "keep_resume_checkpoints": True})
    assert _changed(plan, same) == set()

    ft = _changed(plan, make_plan(finetune={"learning_rate": 1e-5}))
    assert ft and all(j.startswith("finetune") for j in ft)
    assert len(ft) == 6
    pre = _changed(plan, make_plan(pretrain={"learning_rate": 3e-4}))
    assert "pretrain m16-r4-epl-s42" in pre
    assert {j.split()[0] for j in pre} == {"pretrain", "finetune"}
    assert not any("llm-s42" in j for j in pre)
    # Evaluations are not tracked through their checkpoints: modification times are.
    evaluations = {" ".join(k) for k in _lineages(plan) if k[0] == "evaluate"}
    assert _changed(plan, make_plan(evaluation={"max_new_tokens": 8})) == evaluations
    squad = _changed(plan, make_plan(data={"squad": {"eval_size": 4}}))
    assert "prepare_data squad" in squad and not any("prepare_data pretrain" in j
                                                     for j in squad)
    assert {j.split()[0] for j in squad} == {"prepare_data", "finetune"}
    assert _changed(plan, make_plan(workflow={"tables": {"decimals": 1}})) == {"aggregate"}
    # An ICAE-only model key: not the plain LLM's jobs; the budget branch keeps only the
    # memory size and rate.
    icae_only = _changed(plan, make_plan(model={"min_compress_len": 5}))
    assert icae_only and not any("llm-s42" in j or "m16-r4-s42" in j for j in icae_only)
    # Every ICAE-only key (one list, icae.config) that does not name the branch.
    edits = {"min_compress_len": 5, "max_encoder_tokens": 4096, "train_decoder": True,
             "slot_rule": "fixed", "memory_scale": "embedding"}
    branch_keys = {"mem_size", "mean_compression_rate", "position_layout"}
    assert set(edits) == ICAE_ONLY_MODEL_KEYS - branch_keys
    for key, value in edits.items():
        changed = _changed(plan, make_plan(model={key: value}))
        assert changed and not any("llm-s42" in j for j in changed), key
    # Freezing ICAE's encoder in fine-tuning: the ICAE fine-tunings (and what reads them),
    # not the plain LLM's.
    # So does keeping autoencoding in the fine-tuning mix.
    for key, value in (("freeze_encoder", True), ("freeze_decoder", True), ("ae_ratio", 0.25)):
        icae_plan = make_plan(finetune={key: value})
        changed = _changed(plan, icae_plan)
        assert changed and all("llm-s42" not in j for j in changed), key
        assert any(j.startswith("finetune icae") for j in changed), key
        llm_cfg, _ = icae_plan.job("finetune", branch="llm-s42", dataset="squad",
                                   model_type="llm")
        assert not llm_cfg["finetune"][key], key
    # A speed/memory knob reruns nothing.
    assert _changed(plan, make_plan(pretrain={"loss_chunk_tokens": 8192})) == set()
    base = _changed(plan, make_plan(model={"lora_r": 8}))
    assert any("llm-s42" in j for j in base) and any("m16-r4-s42" in j for j in base)


def test_resume_folder_follows_the_lineage():
    def resume(plan):
        return plan.job("pretrain", branch="m16-r4-epl-s42")[0]["pretrain"]["resume_dir"]

    plan = make_plan()
    assert resume(plan) == resume(make_plan(pretrain={"logging_steps": 3}))
    assert resume(plan) != resume(make_plan(pretrain={"learning_rate": 3e-4}))
    assert resume(plan) != resume(make_plan(data={"pretrain": {"eval_size": 3}}))


# ---------------------------------------------------------------------------------------
# The command line.


@pytest.mark.parametrize("value", ["plain", "yes", "1e-4", "null", "a: b", "", "two\nlines",
                                   "[x]", 3, 2.5, None, True, [1, "a"], {"k": "v"}])
def test_override_values_read_back(value):
    assert parse_override(f"key={P.override_value(value)}") == ("key", value)


@pytest.mark.parametrize("sections", [
    # finetune's own default learning rate (5e-5, not TrainingConfig's) is left off the
    # command line: the job must still read it back.
    {"finetune": {"max_steps": 2}},
    {"finetune": {"learning_rate": 3e-5},
     "data": {"squad": {"train_file": "my data/train file.jsonl"}}},
])
def test_cli_args_give_back_the_job_config(sections):
    plan = make_plan(**sections)
    for step, w in [("pretrain", {"branch": "m16-r4-epl-s42"}),
                    ("finetune", {"branch": "llm-s42", "dataset": "squad", "model_type": "llm"}),
                    ("evaluate", {"branch": "m16-r4-s42", "variant": "truncate", "task": "qa"}),
                    ("aggregate", {})]:
        cfg, _ = plan.job(step, **w)
        args = shlex.split(P.cli_args(cfg))
        assert to_dict(load_config(None, args)) == {"workflow": {}, **cfg}
    # Only what differs from icae's defaults is written.
    cfg, _ = make_plan().job("prepare_model")
    assert P.cli_args(cfg).split() == ["run_name=t", "model.model_dir=results/t/model",
                                       "model.mem_size=16", "model.max_encoder_tokens=256",
                                       "data.prepared_dir=results/t/data"]


def test_commands():
    plan = make_plan(workflow={"gpu": {"pretrain": 2, "finetune": 1, "evaluate": 0}})
    cmd = plan.icae_command("pretrain", branch="m16-r4-epl-s42")
    assert cmd.startswith("env PYTHONPATH=/checkout${PYTHONPATH:+:$PYTHONPATH} ")
    assert "ICAE_WANDB_NAME=t/m16-r4-epl-s42/pretrain " in cmd
    assert "ICAE_WANDB_TAGS=pretrain,icae,m16-r4-epl-s42,mem16,rate4,epl " in cmd
    assert "WANDB_MODE=disabled" in cmd
    assert "OMP_NUM_THREADS=$(( $(( ${OMP_NUM_THREADS:-2} / 2 ))" in cmd
    assert cmd.endswith("/bin/py -m icae.placement --gpus 2 -- "
                        "torchrun --standalone --nproc_per_node 2 -m icae")
    cmd = plan.icae_command("finetune", branch="llm-s42", dataset="squad", model_type="llm")
    assert "ICAE_WANDB_TAGS=finetune,llm,squad,llm-s42 " in cmd
    assert cmd.endswith("--gpus 1 -- python -m icae") and "OMP_NUM_THREADS" not in cmd
    for step, w in (("evaluate", {"branch": "llm-s42", "variant": "base", "task": "qa"}),
                    ("prepare_model", {})):
        cmd = plan.icae_command(step, **w)
        assert "icae.placement" not in cmd and "ICAE_WANDB" not in cmd
        assert cmd.endswith(" python -m icae")
    resume = plan.job("pretrain", branch="m16-r4-epl-s42")[0]["pretrain"]["resume_dir"]
    assert plan.cleanup_command("pretrain", branch="m16-r4-epl-s42") == f"rm -rf -- {resume}"
    keep = make_plan(workflow={"keep_resume_checkpoints": True})
    assert keep.cleanup_command("pretrain", branch="m16-r4-epl-s42") == "true"


def test_resources():
    plan = make_plan(workflow={"threads": {"pretrain": 3}, "local_rules": ["aggregate"]})
    assert plan.threads("pretrain") == 3 and plan.threads("evaluate") == 4
    assert plan.gpus("evaluate") == 1
    assert plan.is_local("aggregate") and not plan.is_local("prepare_model")
