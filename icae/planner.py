"""The experiment plan behind ``workflow/Snakefile``: the branches of a sweep, the variants
and evaluations, the output paths, and each job's config and lineage. Pure Python (no
Snakemake), so every part of it is unit-tested (tests/test_planner.py);
``workflow/rules/common.smk`` validates the config, builds one :class:`Plan` and hands
its answers to the rules.

Every job runs ``<python> -m icae <command> key=value ...``: the job's complete config
(the workflow's config with the branch's sweep values, paths and variant filled in) is
passed on the command line as the overrides that turn icae's defaults into it
(:func:`cli_args`), so a job never reads a config file that a later edit could change
behind Snakemake's back.

Rerun tracking. Snakemake's params trigger compares the ``repr`` of params of builtin
types. Each rule's ``params.tracked`` is the canonical JSON of a job's *lineage*: the
config keys that can change its result (its own section(s) minus
``workflow.untracked_keys``, the branch's sweep values, the seed), and for training
jobs those of the jobs upstream of it. Changing any of them reruns the job and, through
modification times, everything downstream of it. The command prefix and the full config
are passed as untracked params, so logging-only settings (report_to, progress,
logging_steps, ...) take effect on the next run without rerunning anything.

Names. Branch folders (:func:`branch_name` / :func:`parse_branch`), variants
(:func:`variant_name` / :func:`parse_variant`) and output locations
(:func:`pretrain_dir`, :func:`finetune_dir`, :func:`eval_dir` / :func:`parse_output_path`)
are built and read back by these pairs only; ``icae aggregate`` reads the branch, variant
and task of a result from its path with them.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import yaml

from icae.config import (DATA_SETS, FINETUNE_DATASETS, ICAE_ONLY_MODEL_KEYS, MODEL_TYPES,
                         POSITION_LAYOUTS, ExperimentConfig, config_from_dict, to_dict)
from icae.data.prepared import split_filename
from icae.tasks import dataset_of_task, task_of_dataset

# Evaluation task -> the data set it reads (ae evaluates on the pretrain set), and the
# task of each downstream (fine-tuning) data set (the task registry, icae.tasks).
DATASET_OF_TASK = dataset_of_task()
TASK_OF_DATASET = task_of_dataset()
ALL_DATASETS = DATA_SETS
EXPERIMENT_KEYS = ("run_name", "output_root", "seed", "model", "data", "pretrain",
                   "finetune", "evaluation")
TRAINING_STEPS = ("pretrain", "finetune")
# What a training job leaves in its final folder (trained parameters only).
CHECKPOINT_FILES = {"weights": "trained.safetensors", "meta": "checkpoint.json",
                    "config": "config.yaml", "train_log": "log.csv"}


class PlanError(ValueError):
    """A config the workflow cannot run; the message names the key."""


# ---------------------------------------------------------------------------------------
# Branch names: folders under <output_root>/<run_name> holding one combination of sweep
# values.
#   icae    m<mem>-r<rate>-<layout>-s<seed>: pretrain, icae fine-tunes and their evaluations
#   budget  m<mem>-r<rate>-s<seed>:          the truncate baseline (cut to the memory budget)
#   llm     llm-s<seed>:                     base, no_context, llm fine-tunes (no compression)

BRANCH_KINDS = ("icae", "budget", "llm")


@dataclass(frozen=True)
class BranchKey:
    """The sweep values a branch stands for (``None`` where its kind has none)."""

    kind: str
    seed: int
    mem_size: int | None = None
    rate: float | None = None
    layout: str | None = None


def fmt_rate(rate: float) -> str:
    return f"{float(rate):g}"


def branch_name(key: BranchKey) -> str:
    if key.kind == "icae":
        return f"m{key.mem_size}-r{fmt_rate(key.rate)}-{key.layout}-s{key.seed}"
    if key.kind == "budget":
        return f"m{key.mem_size}-r{fmt_rate(key.rate)}-s{key.seed}"
    if key.kind == "llm":
        return f"llm-s{key.seed}"
    raise ValueError(f"unknown branch kind {key.kind!r}; expected one of "
                     f"{', '.join(BRANCH_KINDS)}")


# fmt_rate's output for a rate >= 1: "4", "2.5", "1e+06".
_RATE = r"\d+(?:\.\d*)?(?:e[+-]?\d+)?"
_BRANCH = re.compile(
    rf"m(?P<mem>\d+)-r(?P<rate>{_RATE})-(?:(?P<layout>{'|'.join(POSITION_LAYOUTS)})-)?"
    rf"s(?P<seed>-?\d+)|llm-s(?P<llm_seed>-?\d+)")


def parse_branch(name: str) -> BranchKey | None:
    """The key :func:`branch_name` built ``name`` from; ``None`` for another name."""
    m = _BRANCH.fullmatch(name)
    if m is None:
        return None
    if m["llm_seed"] is not None:
        return BranchKey("llm", int(m["llm_seed"]))
    return BranchKey("icae" if m["layout"] else "budget", int(m["seed"]), int(m["mem"]),
                     float(m["rate"]), m["layout"])


# ---------------------------------------------------------------------------------------
# Variants: what an evaluation loads.


@dataclass(frozen=True)
class Variant:
    """``model_type`` as evaluated, the data set it was fine-tuned on (``None``: not
    fine-tuned) and the context policy of the untrained base model (``baseline``)."""

    model_type: str
    finetuned_on: str | None = None
    baseline: str = "none"

    @property
    def branch_kind(self) -> str:
        """The kind of branch it is evaluated in."""
        if self.baseline == "truncate":
            return "budget"
        return "icae" if self.model_type == "icae" else "llm"

    @property
    def source(self) -> None | str | tuple[str, str, str]:
        """The checkpoint it loads: ``None`` (untrained), ``"pretrain"`` or
        ``("finetune", dataset, model_type)``."""
        if self.finetuned_on is not None:
            return ("finetune", self.finetuned_on, self.model_type)
        return "pretrain" if self.model_type == "icae" else None


_UNTRAINED = {Variant("llm"): "base", Variant("llm", baseline="no_context"): "no_context",
              Variant("llm", baseline="truncate"): "truncate",
              Variant("icae"): "icae-pretrained"}
_FINETUNED = re.compile(rf"(?P<model_type>{'|'.join(MODEL_TYPES)})-ft-(?P<dataset>[^/]+)")


def variant_name(variant: Variant) -> str:
    if variant.finetuned_on is not None and variant.baseline == "none":
        return f"{variant.model_type}-ft-{variant.finetuned_on}"
    try:
        return _UNTRAINED[variant]
    except KeyError:
        raise ValueError(f"no such variant: {variant}") from None


def parse_variant(name: str) -> Variant | None:
    """The variant :func:`variant_name` named ``name``; ``None`` for another name."""
    for variant, fixed in _UNTRAINED.items():
        if name == fixed:
            return variant
    m = _FINETUNED.fullmatch(name)
    return Variant(m["model_type"], m["dataset"]) if m else None


# Every variant the workflow knows, in the order of its wildcard constraint.
VARIANTS = {name: variant for variant, name in _UNTRAINED.items()}
VARIANTS.update({variant_name(Variant(mt, ds)): Variant(mt, ds)
                 for ds in FINETUNE_DATASETS for mt in MODEL_TYPES})


# ---------------------------------------------------------------------------------------
# Output locations under <output_root>/<run_name>.


def pretrain_dir(run: str, branch: str) -> str:
    return f"{run}/{branch}/pretrain/final"


def finetune_name(dataset: str, model_type: str) -> str:
    return f"{dataset}-{model_type}"


def finetune_dir(run: str, branch: str, dataset: str, model_type: str) -> str:
    return f"{run}/{branch}/finetune/{finetune_name(dataset, model_type)}/final"


def eval_dir(run: str, branch: str, variant: str, task: str) -> str:
    return f"{run}/{branch}/eval/{variant}/{task}"


@dataclass(frozen=True)
class OutputPlace:
    """Where a file sits in the workflow's layout: its branch and the job that wrote it
    (``pretrain``, ``finetune`` with the run's ``<dataset>-<model_type>`` folder name, or
    ``evaluate`` with variant and task)."""

    branch: str
    key: BranchKey
    step: str
    finetune: str | None = None
    variant: str | None = None
    task: str | None = None


def parse_output_path(path: str | Path) -> OutputPlace | None:
    """The place of a file in one of the folders that :func:`pretrain_dir`,
    :func:`finetune_dir` and :func:`eval_dir` name (``<branch>/eval/<variant>/<task>/<file>``,
    ``<branch>/pretrain/<final>/<file>``, ``<branch>/finetune/<name>/<final>/<file>``,
    anywhere in ``path``); ``None`` elsewhere."""
    parts = PurePosixPath(Path(path).as_posix()).parts
    candidates = []
    if len(parts) >= 5 and parts[-4] == "eval":
        candidates.append((parts[-5], {"step": "evaluate", "variant": parts[-3],
                                       "task": parts[-2]}))
    if len(parts) >= 4 and parts[-3] == "pretrain":
        candidates.append((parts[-4], {"step": "pretrain"}))
    if len(parts) >= 5 and parts[-4] == "finetune":
        candidates.append((parts[-5], {"step": "finetune", "finetune": parts[-3]}))
    for branch, fields in candidates:
        key = parse_branch(branch)
        if key is not None:
            return OutputPlace(branch, key, **fields)
    return None


def checkpoint_files(directory: str, prefix: str = "") -> dict[str, str]:
    return {f"{prefix}{key}": f"{directory}/{name}" for key, name in CHECKPOINT_FILES.items()}


# ---------------------------------------------------------------------------------------
# Job configs on the command line.


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def resolve_experiment(data: dict, where: str) -> dict:
    """icae's own config checks; all non-workflow sections with their defaults."""
    try:
        cfg = to_dict(config_from_dict(copy.deepcopy(data)))
    except ValueError as exc:
        raise PlanError(f"invalid config ({where}): {exc}") from None
    cfg.pop("workflow", None)
    return cfg


def override_value(value: Any) -> str:
    """The text of a value that ``icae.config.parse_override`` (YAML) reads back as is."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value and "\n" not in value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=True)


_MISSING = object()
DEFAULTS = to_dict(ExperimentConfig())


def _overrides(value: Any, default: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict) and isinstance(default, dict):
        for key, sub in value.items():
            yield from _overrides(sub, default.get(key, _MISSING), f"{prefix}.{key}")
    elif value != default or default is _MISSING:
        yield f"{prefix}={override_value(value)}"


def cli_args(cfg: dict) -> str:
    """``key=value`` overrides that turn icae's defaults into ``cfg`` (only the keys that
    differ from the defaults, so that commands and logs stay readable), shell-quoted."""
    out = []
    for key in (*EXPERIMENT_KEYS, "workflow"):
        if key in cfg:
            out += _overrides(cfg[key], DEFAULTS.get(key, _MISSING), key)
    return " ".join(shlex.quote(o) for o in out)


def _without(section: dict, keys: set) -> dict:
    return {k: v for k, v in section.items() if k not in keys}


# ---------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class Branch:
    name: str
    key: BranchKey
    config: dict  # the job config shared by the branch's jobs (resolved, with defaults)

    @property
    def kind(self) -> str:
        return self.key.kind


class Plan:
    """Everything the workflow derives from one config: ``config`` is the workflow's
    config after schema validation (the ``workflow`` section with its defaults; the
    other sections are resolved here by icae's dataclasses). ``repo_root`` is the
    checkout the jobs run icae from; ``launcher_python`` the interpreter that runs
    ``icae.placement`` (Snakemake's own)."""

    def __init__(self, config: dict, repo_root: str | Path,
                 launcher_python: str = sys.executable) -> None:
        self.workflow = config["workflow"]
        self.experiment = resolve_experiment(
            {k: v for k, v in config.items() if k != "workflow"}, "config")
        self.repo_root = Path(repo_root)
        self.launcher_python = launcher_python
        self.untracked = set(self.workflow["untracked_keys"])
        self._check_sharding()

        exp, wf = self.experiment, self.workflow
        self.run = f"{exp['output_root']}/{exp['run_name']}"
        self.logs = f"logs/{exp['run_name']}"
        self.model_dir = f"{self.run}/model"
        self.data_dir = f"{self.run}/data"
        self.work_dir = f"{self.run}/work"
        self.bench_dir = f"{self.run}/benchmarks"
        self.tables_dir = f"{self.run}/tables"

        self.mem_sizes = self._sweep("mem_size", exp["model"]["mem_size"])
        self.rates = [float(r) for r in
                      self._sweep("mean_compression_rate",
                                  exp["model"]["mean_compression_rate"])]
        self.layouts = self._sweep("position_layout", exp["model"]["position_layout"])
        self.seeds = self._sweep("seed", exp["seed"])
        if len({fmt_rate(r) for r in self.rates}) != len(self.rates):
            raise PlanError("workflow.sweep.mean_compression_rate: values must differ")
        self.model_types = list(wf["model_types"])
        self.finetune_datasets = list(wf["finetune_datasets"])
        self.downstream_tasks = [TASK_OF_DATASET[d] for d in self.finetune_datasets]
        self.baselines = list(wf["baselines"])

        # Job config shared by all jobs: where the base model and the prepared data live.
        self.job_base = copy.deepcopy(exp)
        self.job_base["model"]["model_dir"] = self.model_dir
        self.job_base["data"]["prepared_dir"] = self.data_dir
        self.branches = self._branches()
        self.evaluations = self._evaluations()

    # -- sweep, branches, evaluations ------------------------------------------------------

    def _check_sharding(self) -> None:
        for step in TRAINING_STEPS:
            # Sharding needs several processes; the workflow starts them
            # (multi_gpu_launcher) only for jobs with more than one GPU.
            fsdp, gpus = self.experiment[step]["fsdp"], self.workflow["gpu"][step]
            if fsdp and gpus < 2:
                raise PlanError(
                    f"invalid config: {step}.fsdp={fsdp!r} shards the model over several "
                    f"GPUs, but workflow.gpu.{step} is {gpus}: set it to 2 or more, or "
                    f'{step}.fsdp: ""')

    def _sweep(self, key: str, default: Any) -> list:
        values = self.workflow["sweep"][key]
        return list(values) if values else [default]

    def _branch(self, key: BranchKey) -> Branch:
        name = branch_name(key)
        cfg = copy.deepcopy(self.job_base)
        cfg["seed"] = key.seed
        model = cfg["model"]
        if key.mem_size is not None:
            model["mem_size"] = key.mem_size
            model["mean_compression_rate"] = key.rate
        if key.layout is not None:
            model["position_layout"] = key.layout
        model["model_type"] = "icae" if key.kind == "icae" else "llm"
        if key.kind != "icae":
            model["train_decoder"] = False
            # (ignored by the plain LLM, which has no memory; unset, they rerun nothing)
            cfg["finetune"]["freeze_encoder"] = False
            cfg["finetune"]["freeze_decoder"] = False
            cfg["finetune"]["ae_ratio"] = 0.0
        return Branch(name, key, resolve_experiment(cfg, f"branch {name}"))

    def _branches(self) -> dict[str, Branch]:
        keys = []
        for mem, rate, layout, seed in itertools.product(self.mem_sizes, self.rates,
                                                         self.layouts, self.seeds):
            if "icae" in self.model_types:
                keys.append(BranchKey("icae", seed, mem, rate, layout))
            if "truncate" in self.baselines and self.downstream_tasks:
                keys.append(BranchKey("budget", seed, mem, rate))  # shared by the layouts
        for seed in self.seeds:
            if (("llm" in self.model_types and self.finetune_datasets)
                    or ({"base", "no_context"} & set(self.baselines)
                        and self.downstream_tasks)):
                keys.append(BranchKey("llm", seed))
        out = {}
        for key in keys:
            name = branch_name(key)
            if name not in out:
                out[name] = self._branch(key)
        return out

    def branch_names(self, *kinds: str) -> list[str]:
        return [name for name, b in self.branches.items() if b.kind in kinds]

    def _evaluations(self) -> list[tuple[str, str, str]]:
        """(branch, variant, task) of every evaluation the config asks for."""
        out = []
        for b in self.branch_names("icae"):
            out += [(b, "icae-pretrained", t) for t in self.workflow["pretrained_tasks"]]
            out += [(b, variant_name(Variant("icae", d)), TASK_OF_DATASET[d])
                    for d in self.finetune_datasets]
        for b in self.branch_names("budget"):
            out += [(b, "truncate", t) for t in self.downstream_tasks]
        for b in self.branch_names("llm"):
            for v in ("base", "no_context"):
                if v in self.baselines:
                    out += [(b, v, t) for t in self.downstream_tasks]
            if "llm" in self.model_types:
                out += [(b, variant_name(Variant("llm", d)), TASK_OF_DATASET[d])
                        for d in self.finetune_datasets]
        return out

    def branch_regex(self, *kinds: str) -> str:
        names = self.branch_names(*kinds)
        return "|".join(re.escape(b) for b in names) or "(?!x)x"

    # -- paths and inputs ------------------------------------------------------------------

    def pretrain_dir(self, branch: str) -> str:
        return pretrain_dir(self.run, branch)

    def finetune_dir(self, branch: str, dataset: str, model_type: str) -> str:
        return finetune_dir(self.run, branch, dataset, model_type)

    def eval_dir(self, branch: str, variant: str, task: str) -> str:
        return eval_dir(self.run, branch, variant, task)

    def variant_checkpoint(self, branch: str, variant: str) -> str | None:
        source = VARIANTS[variant].source
        if source is None:
            return None
        if source == "pretrain":
            return self.pretrain_dir(branch)
        _, dataset, model_type = source
        return self.finetune_dir(branch, dataset, model_type)

    def metrics_files(self) -> list[str]:
        return [f"{self.eval_dir(b, v, t)}/metrics.csv" for b, v, t in self.evaluations]

    def paper_table_names(self) -> list[str]:
        """The aggregate step's tables: one per evaluated task, then the summary."""
        tasks = list(dict.fromkeys(t for _, _, t in self.evaluations))
        return tasks + ["summary"] if tasks else []

    def training_logs(self) -> list[str]:
        logs = []
        for b in self.branch_names("icae"):
            logs.append(f"{self.pretrain_dir(b)}/log.csv")
            logs += [f"{self.finetune_dir(b, d, 'icae')}/log.csv"
                     for d in self.finetune_datasets]
        if "llm" in self.model_types:
            for b in self.branch_names("llm"):
                logs += [f"{self.finetune_dir(b, d, 'llm')}/log.csv"
                         for d in self.finetune_datasets]
        return logs

    def local_source_files(self, dataset: str) -> list[str]:
        """Local files a data set is built from (edits to them rebuild it)."""
        d = self.experiment["data"][dataset]
        if dataset == "pretrain":
            paths = [s["path"] for s in d["sources"] + d["eval_sources"]]
        elif dataset == "repoqa":
            paths = [d["release_file"], d["train_tasks_file"]]
        else:
            paths = [d["train_file"], d["eval_file"]]
        return sorted({p for p in paths if p})

    def prepared_file(self, dataset: str, split: str) -> str:
        """A prepared split (:func:`icae.data.prepared.split_filename`): the output of
        its prepare_data job and an input of the jobs that read it."""
        return f"{self.data_dir}/{dataset}/{split_filename(split)}"

    def pretrain_inputs(self, branch: str) -> dict[str, str]:
        inputs = {"model": self.model_dir, "train": self.prepared_file("pretrain", "train"),
                  "eval": self.prepared_file("pretrain", "eval")}
        init = self.branches[branch].config["pretrain"].get("init_checkpoint")
        if init:  # continued or adopted (max_steps 0): a new checkpoint there reruns it
            inputs["init_meta"] = f"{init}/checkpoint.json"
        return inputs

    def finetune_inputs(self, branch: str, dataset: str, model_type: str) -> dict[str, str]:
        inputs = {"model": self.model_dir, "train": self.prepared_file(dataset, "train"),
                  "eval": self.prepared_file(dataset, "eval")}
        if model_type == "icae":
            inputs.update(checkpoint_files(self.pretrain_dir(branch), "init_"))
        return inputs

    def evaluate_inputs(self, branch: str, variant: str, task: str) -> dict[str, str]:
        inputs = {"model": self.model_dir,
                  "data": self.prepared_file(DATASET_OF_TASK[task], "eval")}
        ckpt = self.variant_checkpoint(branch, variant)
        if ckpt is not None:
            inputs.update(checkpoint_files(ckpt, "checkpoint_"))
        return inputs

    # -- job configs: what each job gets (all of it) and what reruns it (its lineage) -----

    def _tracked_model(self, cfg: dict, kind: str) -> dict:
        drop = {"model_dir"}
        if kind == "llm":
            drop |= ICAE_ONLY_MODEL_KEYS
        elif kind == "budget":
            drop |= ICAE_ONLY_MODEL_KEYS - {"mem_size", "mean_compression_rate"}
        return _without(cfg["model"], drop)

    def _tracked_training(self, cfg: dict, section: str) -> dict:
        return _without(cfg[section], self.untracked | {"output_dir", "resume_dir"})

    def job_prepare_model(self) -> tuple[dict, dict]:
        cfg = copy.deepcopy(self.job_base)
        tracked = {k: cfg["model"][k] for k in ("base_model", "revision")}
        return cfg, {"prepare_model": tracked}

    def job_prepare_data(self, dataset: str) -> tuple[dict, dict]:
        cfg = copy.deepcopy(self.job_base)
        cfg["data"]["build"] = [dataset]
        tracked = {"dataset": dataset,
                   "data": {dataset: cfg["data"][dataset],
                            "skip_bad_lines": cfg["data"]["skip_bad_lines"]},
                   "seed": cfg["seed"]}
        return cfg, {"prepare_data": tracked, "upstream": self.job_prepare_model()[1]}

    def job_pretrain(self, branch: str) -> tuple[dict, dict]:
        cfg = copy.deepcopy(self.branches[branch].config)
        tracked = {"model": self._tracked_model(cfg, "icae"),
                   "pretrain": self._tracked_training(cfg, "pretrain"),
                   "seed": cfg["seed"]}
        lineage = {"pretrain": tracked, "upstream": self.job_prepare_data("pretrain")[1]}
        # The job's resume check ignores what this workflow ignores (its work folder is
        # already named by the hash of everything else).
        cfg["workflow"] = {"untracked_keys": sorted(self.untracked)}
        cfg["pretrain"]["output_dir"] = self.pretrain_dir(branch)
        cfg["pretrain"]["resume_dir"] = (f"{self.work_dir}/{branch}/pretrain-"
                                         f"{short_hash(canonical(lineage))}")
        return cfg, lineage

    def job_finetune(self, branch: str, dataset: str, model_type: str) -> tuple[dict, dict]:
        b = self.branches[branch]
        cfg = copy.deepcopy(b.config)
        ft = cfg["finetune"]
        ft["dataset"] = dataset
        ft["init_checkpoint"] = self.pretrain_dir(branch) if model_type == "icae" else None
        tracked = {"model": self._tracked_model(cfg, b.kind),
                   "finetune": self._tracked_training(cfg, "finetune"),
                   "seed": cfg["seed"]}
        upstream = [self.job_prepare_data(dataset)[1]]
        if model_type == "icae":
            upstream.append(self.job_pretrain(branch)[1])
        lineage = {"finetune": tracked, "upstream": upstream}
        cfg["workflow"] = {"untracked_keys": sorted(self.untracked)}
        ft["output_dir"] = self.finetune_dir(branch, dataset, model_type)
        ft["resume_dir"] = (f"{self.work_dir}/{branch}/finetune-"
                            f"{finetune_name(dataset, model_type)}-"
                            f"{short_hash(canonical(lineage))}")
        return cfg, lineage

    def job_evaluate(self, branch: str, variant: str, task: str) -> tuple[dict, dict]:
        b = self.branches[branch]
        v = VARIANTS[variant]
        cfg = copy.deepcopy(b.config)
        ev = cfg["evaluation"]
        ev["task"] = task
        ev["checkpoint"] = self.variant_checkpoint(branch, variant)
        ev["output_dir"] = self.eval_dir(branch, variant, task)
        ev["baseline"] = v.baseline
        ev["variant"] = variant
        cfg["model"]["model_type"] = v.model_type
        tracked = {"model": self._tracked_model(cfg, b.kind),
                   "evaluation": _without(ev, self.untracked | {"output_dir"}),
                   "seed": cfg["seed"]}
        return cfg, {"evaluate": tracked}

    def job_aggregate(self) -> tuple[dict, dict]:
        cfg = copy.deepcopy(self.job_base)
        cfg["workflow"] = {"tables": self.workflow["tables"]}
        return cfg, {"aggregate": self.workflow["tables"]}

    def job(self, step: str, **wildcards: str) -> tuple[dict, dict]:
        """(the job's complete config, its lineage) for a rule's wildcards."""
        jobs = {"prepare_model": self.job_prepare_model,
                "prepare_data": self.job_prepare_data, "pretrain": self.job_pretrain,
                "finetune": self.job_finetune, "evaluate": self.job_evaluate,
                "aggregate": self.job_aggregate}
        return jobs[step](**wildcards)

    def tracked(self, step: str, **wildcards: str) -> str:
        """The canonical JSON of what can change the job's result."""
        return canonical(self.job(step, **wildcards)[1])

    # -- commands --------------------------------------------------------------------------

    def icae_command(self, step: str, **wildcards: str) -> str:
        """``env PYTHONPATH=<checkout> K=V ... <python|launcher> -m icae``. The checkout
        comes first on PYTHONPATH, so jobs run its icae code with any interpreter (the
        .venv, a --sdm conda environment)."""
        wf = self.workflow
        pythonpath = shlex.quote(str(self.repo_root)) + "${PYTHONPATH:+:$PYTHONPATH}"
        env = [f"PYTHONPATH={pythonpath}"]
        env += [f"{k}={shlex.quote(str(v))}" for k, v in self.tracking_env(step, **wildcards)]
        env += [f"{k}={shlex.quote(str(v))}" for k, v in wf["env"].items()]
        gpus = wf["gpu"].get(step, 0)
        if step in TRAINING_STEPS and gpus > 1:
            launcher = wf["multi_gpu_launcher"].format(gpu=gpus)
            # Snakemake sets OMP_NUM_THREADS to the job's threads; each of the launcher's
            # processes gets its share, so the job uses the CPUs it asked for.
            share = f"$(( ${{OMP_NUM_THREADS:-{gpus}}} / {gpus} ))"
            env.append(f"OMP_NUM_THREADS=$(( {share} > 0 ? {share} : 1 ))")
        else:
            launcher = shlex.quote(wf["python"])
        placement = []
        if gpus > 0:
            # Snakemake's gpu resource only counts GPUs; icae.placement picks free devices
            # (lock files) and sets CUDA_VISIBLE_DEVICES, so parallel jobs do not all use
            # cuda:0. It needs only the standard library, so Snakemake's own interpreter
            # runs it whatever workflow.python is.
            placement = [shlex.quote(self.launcher_python), "-m", "icae.placement",
                         "--gpus", str(gpus), "--"]
        return " ".join(["env", *env, *placement, launcher, "-m", "icae"])

    def tracking_env(self, step: str, **wildcards: str) -> list[tuple[str, str]]:
        """Run name, group, job type and tags of a training job's wandb run
        (icae.training.tracking reads them; used only with report_to: [wandb])."""
        if step not in TRAINING_STEPS:
            return []
        branch = wildcards["branch"]
        key = self.branches[branch].key
        if step == "pretrain":
            job, tags = "pretrain", ["pretrain", "icae"]
        else:
            dataset, model_type = wildcards["dataset"], wildcards["model_type"]
            job = f"finetune-{finetune_name(dataset, model_type)}"
            tags = ["finetune", model_type, dataset]
        tags.append(branch)
        if key.layout is not None:
            tags += [f"mem{key.mem_size}", f"rate{fmt_rate(key.rate)}", key.layout]
        run_name = self.experiment["run_name"]
        return [("ICAE_WANDB_NAME", f"{run_name}/{branch}/{job}"),
                ("ICAE_WANDB_GROUP", f"{run_name}/{branch}"),
                ("ICAE_WANDB_JOB_TYPE", step),
                ("ICAE_WANDB_TAGS", ",".join(tags))]

    def cleanup_command(self, step: str, **wildcards: str) -> str:
        """Shell command run after a training job succeeded: removes its resume folder
        unless ``workflow.keep_resume_checkpoints``."""
        if self.workflow["keep_resume_checkpoints"]:
            return "true"
        resume_dir = self.job(step, **wildcards)[0][step]["resume_dir"]
        return f"rm -rf -- {shlex.quote(resume_dir)}"

    def threads(self, step: str) -> int:
        """CPU threads of a job (``workflow.threads``). Snakemake sets OMP_NUM_THREADS
        and friends to it (1 when a rule declares none), caps it at ``--cores`` locally,
        and the SLURM plugin requests it as ``--cpus-per-task``: what is asked for is
        what is used."""
        return self.workflow["threads"][step]

    def gpus(self, step: str) -> int:
        return self.workflow["gpu"][step]

    def is_local(self, rule: str) -> bool:
        return rule in self.workflow["local_rules"]

