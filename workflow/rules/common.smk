"""Glue between the config, the experiment plan (icae/planner.py) and the rules: config
validation, the plan, and the input and params functions the rules call.

The plan (branches, variants, evaluations, paths, job configs and their lineage) is
built by :class:`icae.planner.Plan` and unit-tested in tests/test_planner.py; see its
docstring for how the job configs and rerun tracking work. Nothing here defines a rule.
"""

import copy
import re  # the Snakefile's wildcard constraints
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

try:
    import icae.planner as planner
except ImportError:  # not installed: use the checkout that holds this workflow
    sys.path.insert(0, str(Path(workflow.basedir).parent))
    import icae.planner as planner
from icae.planner import ALL_DATASETS, DATASET_OF_TASK, VARIANTS, checkpoint_files
from icae.schema import check_config


class Untracked:
    """A params value that Snakemake renders into the shell command but does not
    compare between runs (its params trigger records builtin types only). ``repr``
    gives the tracked part, should a future Snakemake compare it anyway."""

    def __init__(self, text, tracked=""):
        self.text = text
        self.tracked = tracked

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"Untracked({self.tracked!r})"


# ---------------------------------------------------------------------------------------
# Config: YAML 1.1 strings to numbers, unknown keys and schema violations as one line,
# then Snakemake's validation, which fills in the workflow section's defaults. The
# other sections get theirs from icae's dataclasses, as the jobs do when they read their
# overrides back: the plan resolves them from the config as given, before Snakemake adds
# the schema's defaults.

_SCHEMA = yaml.safe_load(
    (Path(workflow.basedir) / "schemas" / "config.schema.yaml").read_text(
        encoding="utf-8"
    )
)
try:
    check_config(config, _SCHEMA)
except ValueError as exc:
    raise WorkflowError(str(exc)) from None
_EXPERIMENT = copy.deepcopy({k: v for k, v in config.items() if k != "workflow"})
validate(config, "../schemas/config.schema.yaml")

try:
    PLAN = planner.Plan(
        {**_EXPERIMENT, "workflow": config["workflow"]},
        repo_root=Path(workflow.basedir).resolve().parent,
    )
except planner.PlanError as exc:
    raise WorkflowError(str(exc)) from None

RUN = PLAN.run
LOGS = PLAN.logs
MODEL_DIR = PLAN.model_dir
DATA_DIR = PLAN.data_dir
BENCH_DIR = PLAN.bench_dir
TABLES_DIR = PLAN.tables_dir
# The evaluate rule's output folder (wildcards branch, variant, task).
EVAL_DIR = PLAN.eval_dir("{branch}", "{variant}", "{task}")


# ---------------------------------------------------------------------------------------
# Input functions.


def pretrain_inputs(wildcards):
    return PLAN.pretrain_inputs(wildcards.branch)


def finetune_inputs(wildcards):
    return PLAN.finetune_inputs(
        wildcards.branch, wildcards.dataset, wildcards.model_type
    )


def evaluate_inputs(wildcards):
    return PLAN.evaluate_inputs(wildcards.branch, wildcards.variant, wildcards.task)


def local_source_files(wildcards):
    return PLAN.local_source_files(wildcards.dataset)


# ---------------------------------------------------------------------------------------
# Params: the tracked lineage, and the untracked command prefix, config and cleanup.


def tracked(step):
    return lambda wildcards: PLAN.tracked(step, **dict(wildcards.items()))


def args(step):
    def get(wildcards):
        cfg, lineage = PLAN.job(step, **dict(wildcards.items()))
        return Untracked(planner.cli_args(cfg), planner.canonical(lineage))

    return get


def icae_command(step):
    return lambda wildcards: Untracked(
        PLAN.icae_command(step, **dict(wildcards.items()))
    )


def cleanup(step):
    return lambda wildcards: Untracked(
        PLAN.cleanup_command(step, **dict(wildcards.items()))
    )
