"""Helpers of the ICAE workflow: config checks, sweep branches, paths, job configs.

Every job runs ``<python> -m icae <command> key=value ...``: the job's complete config
(the workflow's config with the branch's sweep values, paths and variant filled in) is
passed on the command line as the overrides that turn icae's defaults into it, so a job
never reads a config file that a later edit could change behind Snakemake's back.

Rerun tracking. Snakemake's params trigger compares the ``repr`` of params of builtin
types and skips other objects. Each rule therefore has

* ``params.tracked``: a canonical JSON string of the config keys that can change the
  job's result (its own section(s) minus ``workflow.untracked_keys``, the branch's sweep
  values, the seed). Changing any of them reruns the job and, through modification
  times, everything downstream of it;
* ``params.icae`` / ``params.args``: :class:`Untracked` objects holding the command
  prefix (interpreter, environment variables) and the full config. They are rendered
  into the shell command but not compared, so logging-only settings (report_to,
  progress, logging_steps, ...) take effect on the next run without rerunning anything.

Nothing here defines a rule.
"""

import copy
import difflib
import hashlib
import itertools
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

try:
    from icae.config import ExperimentConfig, config_from_dict, to_dict
except ImportError:  # not installed: use the checkout that holds this workflow
    sys.path.insert(0, str(Path(workflow.basedir).parent))
    from icae.config import ExperimentConfig, config_from_dict, to_dict


SCHEMA_PATH = Path(workflow.basedir) / "schemas" / "config.schema.yaml"

# Downstream data set -> evaluation task, and back (ae evaluates on the pretrain set).
from icae.tasks import dataset_of_task, datasets, task_of_dataset  # noqa: E402

TASK_OF_DATASET = task_of_dataset()
DATASET_OF_TASK = dataset_of_task()
ALL_DATASETS = datasets()
EXPERIMENT_KEYS = (
    "run_name",
    "output_root",
    "seed",
    "model",
    "data",
    "pretrain",
    "finetune",
    "evaluation",
)
# model keys that only matter for ICAE (the plain LLM reads contexts as text).
ICAE_ONLY_MODEL_KEYS = {
    "mem_size",
    "mean_compression_rate",
    "position_layout",
    "min_compress_len",
    "slot_rule",
    "max_encoder_tokens",
    "train_decoder",
}


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
# Config: YAML 1.1 strings to numbers, schema validation with defaults, icae's own checks.


_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _schema_at(root, schema):
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            break
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def coerce_to_schema(value, schema, root):
    """Turn strings into the numbers / booleans / nulls the schema asks for.

    YAML 1.1 reads ``1e-4`` as a string and ``--config`` values of nested mappings are
    all strings; JSON-schema validation would reject them."""
    schema = _schema_at(root, schema)
    for sub in schema.get("allOf", []):
        value = coerce_to_schema(value, sub, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in list(value):
            if key in props:
                value[key] = coerce_to_schema(value[key], props[key], root)
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [coerce_to_schema(v, items, root) for v in value]
        return value
    if not isinstance(value, str):
        return value
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if "string" in types or not types:
        return value
    text = value.strip()
    if "integer" in types and _INT_RE.match(text):
        return int(text)
    if "number" in types and _FLOAT_RE.match(text):
        return float(text)
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "null" in types and text.lower() in ("null", "~", "none", ""):
        return None
    return value


def check_config_keys(value, schema, root, prefix="config"):
    """Unknown keys fail with the key's dotted name and a "did you mean" (as icae's CLI),
    not with the schema dump of a failed JSON-schema validation."""
    schema = _schema_at(root, schema)
    for sub in schema.get("allOf", []):
        check_config_keys(value, sub, root, prefix)
    if not isinstance(value, dict) or "properties" not in schema:
        return
    props = schema["properties"]
    for key, sub in value.items():
        name = f"{key}" if prefix == "config" else f"{prefix}.{key}"
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                close = difflib.get_close_matches(str(key), list(props), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise WorkflowError(f"invalid config: {name}: unknown key{hint}")
            continue
        check_config_keys(sub, props[key], root, name)
        items = _schema_at(root, props[key]).get("items")
        if isinstance(sub, list) and isinstance(items, dict):
            for i, item in enumerate(sub):
                check_config_keys(item, items, root, f"{name}[{i}]")


def first_schema_error(value, schema):
    """One line for the first JSON-schema violation: the dotted key and what is wrong."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    if error is None:
        return None
    key = ".".join(str(p) for p in error.absolute_path) or "config"
    return f"invalid config: {key}: {error.message}"


def resolve_experiment(data, where):
    """Run icae's own config checks; return all non-workflow sections with defaults."""
    try:
        cfg = to_dict(config_from_dict(copy.deepcopy(data)))
    except ValueError as exc:
        raise WorkflowError(f"invalid config ({where}): {exc}") from None
    cfg.pop("workflow", None)
    return cfg


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def short_hash(*parts):
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def fmt_rate(rate):
    return f"{float(rate):g}"


# ---------------------------------------------------------------------------------------
# The resolved config, the sweep branches and the variants.


_SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
coerce_to_schema(config, _SCHEMA, _SCHEMA)
check_config_keys(config, _SCHEMA, _SCHEMA)
_error = first_schema_error(config, _SCHEMA)
if _error:
    raise WorkflowError(_error)
validate(config, "../schemas/config.schema.yaml")  # fills in the defaults

WF = config["workflow"]
EXP = resolve_experiment({k: v for k, v in config.items() if k != "workflow"}, "config")
UNTRACKED = set(WF["untracked_keys"])
for _step in ("pretrain", "finetune"):
    # Sharding needs several processes; the workflow starts them (multi_gpu_launcher)
    # only for jobs with more than one GPU.
    if EXP[_step]["fsdp"] and WF["gpu"][_step] < 2:
        raise WorkflowError(
            f"invalid config: {_step}.fsdp={EXP[_step]['fsdp']!r} shards the model over "
            f"several GPUs, but workflow.gpu.{_step} is {WF['gpu'][_step]}: set it to 2 "
            f'or more, or {_step}.fsdp: ""'
        )

RUN = f"{EXP['output_root']}/{EXP['run_name']}"
LOGS = f"logs/{EXP['run_name']}"
MODEL_DIR = f"{RUN}/model"
DATA_DIR = f"{RUN}/data"
WORK_DIR = f"{RUN}/work"
BENCH_DIR = f"{RUN}/benchmarks"
TABLES_DIR = f"{RUN}/tables"


def _sweep(key, default):
    values = WF["sweep"][key]
    return list(values) if values else [default]


MEM_SIZES = _sweep("mem_size", EXP["model"]["mem_size"])
RATES = [
    float(r)
    for r in _sweep("mean_compression_rate", EXP["model"]["mean_compression_rate"])
]
LAYOUTS = _sweep("position_layout", EXP["model"]["position_layout"])
SEEDS = _sweep("seed", EXP["seed"])
if len({fmt_rate(r) for r in RATES}) != len(RATES):
    raise WorkflowError("workflow.sweep.mean_compression_rate: values must differ")

MODEL_TYPES = list(WF["model_types"])
FT_DATASETS = list(WF["finetune_datasets"])
DOWNSTREAM_TASKS = [TASK_OF_DATASET[d] for d in FT_DATASETS]
BASELINES = list(WF["baselines"])

# Job config shared by all jobs: where the base model and the prepared data live.
JOB_BASE = copy.deepcopy(EXP)
JOB_BASE["model"]["model_dir"] = MODEL_DIR
JOB_BASE["data"]["prepared_dir"] = DATA_DIR

# Branches: folders under RUN holding one combination of sweep values.
#   icae    m<mem>-r<rate>-<layout>-s<seed>: pretrain, icae fine-tunes and their evaluations
#   budget  m<mem>-r<rate>-s<seed>:          the truncate baseline (cut to the memory budget)
#   llm     llm-s<seed>:                     base, no_context, llm fine-tunes (no compression)
BRANCHES = {}


def _add_branch(name, kind, seed, mem=None, rate=None, layout=None):
    if name in BRANCHES:  # a budget branch is shared by the layouts
        return
    cfg = copy.deepcopy(JOB_BASE)
    cfg["seed"] = seed
    model = cfg["model"]
    if mem is not None:
        model["mem_size"] = mem
        model["mean_compression_rate"] = rate
    if layout is not None:
        model["position_layout"] = layout
    model["model_type"] = "icae" if kind == "icae" else "llm"
    if kind != "icae":
        model["train_decoder"] = False
    BRANCHES[name] = {
        "kind": kind,
        "seed": seed,
        "mem_size": mem,
        "rate": rate,
        "layout": layout,
        "config": resolve_experiment(cfg, f"branch {name}"),
    }


for _mem, _rate, _layout, _seed in itertools.product(MEM_SIZES, RATES, LAYOUTS, SEEDS):
    if "icae" in MODEL_TYPES:
        _add_branch(
            f"m{_mem}-r{fmt_rate(_rate)}-{_layout}-s{_seed}",
            "icae",
            _seed,
            _mem,
            _rate,
            _layout,
        )
    if "truncate" in BASELINES and DOWNSTREAM_TASKS:
        _add_branch(
            f"m{_mem}-r{fmt_rate(_rate)}-s{_seed}", "budget", _seed, _mem, _rate
        )
for _seed in SEEDS:
    if ("llm" in MODEL_TYPES and FT_DATASETS) or (
        {"base", "no_context"} & set(BASELINES) and DOWNSTREAM_TASKS
    ):
        _add_branch(f"llm-s{_seed}", "llm", _seed)


def branches(kind):
    return [name for name, b in BRANCHES.items() if b["kind"] == kind]


# Variants: what an evaluation loads. source: None (untrained), "pretrain", or
# ("finetune", dataset, model_type).
VARIANTS = {
    "base": {"kind": "llm", "model_type": "llm", "baseline": "none", "source": None},
    "no_context": {
        "kind": "llm",
        "model_type": "llm",
        "baseline": "no_context",
        "source": None,
    },
    "truncate": {
        "kind": "budget",
        "model_type": "llm",
        "baseline": "truncate",
        "source": None,
    },
    "icae-pretrained": {
        "kind": "icae",
        "model_type": "icae",
        "baseline": "none",
        "source": "pretrain",
    },
}
for _ds in ALL_DATASETS[1:]:
    for _mt in ("icae", "llm"):
        VARIANTS[f"{_mt}-ft-{_ds}"] = {
            "kind": _mt,
            "model_type": _mt,
            "baseline": "none",
            "source": ("finetune", _ds, _mt),
        }


def _evaluations():
    """(branch, variant, task) of every evaluation the config asks for."""
    out = []
    for b in branches("icae"):
        out += [(b, "icae-pretrained", t) for t in WF["pretrained_tasks"]]
        out += [(b, f"icae-ft-{d}", TASK_OF_DATASET[d]) for d in FT_DATASETS]
    for b in branches("budget"):
        out += [(b, "truncate", t) for t in DOWNSTREAM_TASKS]
    for b in branches("llm"):
        for v in ("base", "no_context"):
            if v in BASELINES:
                out += [(b, v, t) for t in DOWNSTREAM_TASKS]
        if "llm" in MODEL_TYPES:
            out += [(b, f"llm-ft-{d}", TASK_OF_DATASET[d]) for d in FT_DATASETS]
    return out


EVALUATIONS = _evaluations()


# ---------------------------------------------------------------------------------------
# Paths.


def pretrain_dir(branch):
    return f"{RUN}/{branch}/pretrain/final"


def finetune_dir(branch, dataset, model_type):
    return f"{RUN}/{branch}/finetune/{dataset}-{model_type}/final"


def eval_dir(branch, variant, task):
    return f"{RUN}/{branch}/eval/{variant}/{task}"


# What a training job leaves in its final folder (trained parameters only).
CHECKPOINT_FILES = {
    "weights": "trained.safetensors",
    "meta": "checkpoint.json",
    "config": "config.yaml",
    "train_log": "log.csv",
}


def checkpoint_files(directory, prefix=""):
    return {
        f"{prefix}{key}": f"{directory}/{name}"
        for key, name in CHECKPOINT_FILES.items()
    }


def variant_checkpoint(branch, variant):
    source = VARIANTS[variant]["source"]
    if source is None:
        return None
    if source == "pretrain":
        return pretrain_dir(branch)
    _, dataset, model_type = source
    return finetune_dir(branch, dataset, model_type)


def metrics_files():
    return [f"{eval_dir(b, v, t)}/metrics.csv" for b, v, t in EVALUATIONS]


def paper_table_names():
    """The aggregate step's tables: one per evaluated task, then the summary."""
    tasks = list(dict.fromkeys(t for _, _, t in EVALUATIONS))
    return tasks + ["summary"] if tasks else []


def training_logs():
    logs = []
    for b in branches("icae"):
        logs.append(f"{pretrain_dir(b)}/log.csv")
        logs += [f"{finetune_dir(b, d, 'icae')}/log.csv" for d in FT_DATASETS]
    if "llm" in MODEL_TYPES:
        for b in branches("llm"):
            logs += [f"{finetune_dir(b, d, 'llm')}/log.csv" for d in FT_DATASETS]
    return logs


def local_source_files(dataset):
    """Local files a data set is built from (edits to them rebuild it)."""
    d = EXP["data"][dataset]
    if dataset == "pretrain":
        paths = [s["path"] for s in d["sources"] + d["eval_sources"]]
    elif dataset == "repoqa":
        paths = [d["release_file"], d["train_tasks_file"]]
    else:
        paths = [d["train_file"], d["eval_file"]]
    return sorted({p for p in paths if p})


# ---------------------------------------------------------------------------------------
# Input functions.


def finetune_inputs(wildcards):
    inputs = {
        "model": MODEL_DIR,
        "train": f"{DATA_DIR}/{wildcards.dataset}/train.jsonl",
        "eval": f"{DATA_DIR}/{wildcards.dataset}/eval.jsonl",
    }
    if wildcards.model_type == "icae":
        inputs.update(checkpoint_files(pretrain_dir(wildcards.branch), "init_"))
    return inputs


def evaluate_inputs(wildcards):
    inputs = {
        "model": MODEL_DIR,
        "data": f"{DATA_DIR}/{DATASET_OF_TASK[wildcards.task]}/eval.jsonl",
    }
    ckpt = variant_checkpoint(wildcards.branch, wildcards.variant)
    if ckpt is not None:
        inputs.update(checkpoint_files(ckpt, "checkpoint_"))
    return inputs


# ---------------------------------------------------------------------------------------
# Job configs: what each job gets (all of it) and what reruns it (the tracked part).


def _without(section, keys):
    return {k: v for k, v in section.items() if k not in keys}


def _tracked_model(cfg, kind):
    drop = {"model_dir"}
    if kind == "llm":
        drop |= ICAE_ONLY_MODEL_KEYS
    elif kind == "budget":
        drop |= ICAE_ONLY_MODEL_KEYS - {"mem_size", "mean_compression_rate"}
    return _without(cfg["model"], drop)


def _tracked_training(cfg, section):
    return _without(cfg[section], UNTRACKED | {"output_dir", "resume_dir"})


def job_prepare_model():
    cfg = copy.deepcopy(JOB_BASE)
    tracked = {k: cfg["model"][k] for k in ("base_model", "revision")}
    return cfg, {"prepare_model": tracked}


def job_prepare_data(dataset):
    cfg = copy.deepcopy(JOB_BASE)
    cfg["data"]["build"] = [dataset]
    tracked = {
        "dataset": dataset,
        "data": {
            dataset: cfg["data"][dataset],
            "skip_bad_lines": cfg["data"]["skip_bad_lines"],
        },
        "seed": cfg["seed"],
    }
    return cfg, {"prepare_data": tracked, "upstream": job_prepare_model()[1]}


def job_pretrain(branch):
    cfg = copy.deepcopy(BRANCHES[branch]["config"])
    out = pretrain_dir(branch)
    tracked = {
        "model": _tracked_model(cfg, "icae"),
        "pretrain": _tracked_training(cfg, "pretrain"),
        "seed": cfg["seed"],
    }
    lineage = {"pretrain": tracked, "upstream": job_prepare_data("pretrain")[1]}
    # The job's resume check ignores what this workflow ignores (its work folder is
    # already named by the hash of everything else).
    cfg["workflow"] = {"untracked_keys": sorted(UNTRACKED)}
    cfg["pretrain"]["output_dir"] = out
    cfg["pretrain"][
        "resume_dir"
    ] = f"{WORK_DIR}/{branch}/pretrain-{short_hash(canonical(lineage))}"
    return cfg, lineage


def job_finetune(branch, dataset, model_type):
    kind = BRANCHES[branch]["kind"]
    cfg = copy.deepcopy(BRANCHES[branch]["config"])
    ft = cfg["finetune"]
    ft["dataset"] = dataset
    ft["init_checkpoint"] = pretrain_dir(branch) if model_type == "icae" else None
    tracked = {
        "model": _tracked_model(cfg, kind),
        "finetune": _tracked_training(cfg, "finetune"),
        "seed": cfg["seed"],
    }
    upstream = [job_prepare_data(dataset)[1]]
    if model_type == "icae":
        upstream.append(job_pretrain(branch)[1])
    lineage = {"finetune": tracked, "upstream": upstream}
    cfg["workflow"] = {"untracked_keys": sorted(UNTRACKED)}
    ft["output_dir"] = finetune_dir(branch, dataset, model_type)
    ft["resume_dir"] = (
        f"{WORK_DIR}/{branch}/finetune-{dataset}-{model_type}-{short_hash(canonical(lineage))}"
    )
    return cfg, lineage


def job_evaluate(branch, variant, task):
    kind = BRANCHES[branch]["kind"]
    v = VARIANTS[variant]
    cfg = copy.deepcopy(BRANCHES[branch]["config"])
    ev = cfg["evaluation"]
    ev["task"] = task
    ev["checkpoint"] = variant_checkpoint(branch, variant)
    ev["output_dir"] = eval_dir(branch, variant, task)
    ev["baseline"] = v["baseline"]
    ev["variant"] = variant
    cfg["model"]["model_type"] = v["model_type"]
    tracked = {
        "model": _tracked_model(cfg, kind),
        "evaluation": _without(ev, UNTRACKED | {"output_dir"}),
        "seed": cfg["seed"],
    }
    return cfg, {"evaluate": tracked}


def job_aggregate():
    cfg = copy.deepcopy(JOB_BASE)
    cfg["workflow"] = {"tables": WF["tables"]}
    return cfg, {"aggregate": WF["tables"]}


def _job(step, wildcards):
    w = dict(wildcards.items()) if wildcards is not None else {}
    if step == "prepare_model":
        return job_prepare_model()
    if step == "prepare_data":
        return job_prepare_data(w["dataset"])
    if step == "pretrain":
        return job_pretrain(w["branch"])
    if step == "finetune":
        return job_finetune(w["branch"], w["dataset"], w["model_type"])
    if step == "evaluate":
        return job_evaluate(w["branch"], w["variant"], w["task"])
    if step == "aggregate":
        return job_aggregate()
    raise KeyError(step)


def _override_value(value):
    """The text of a value that ``icae.config.parse_override`` (YAML) reads back as is."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value and "\n" not in value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=True)


def _overrides(value, default, prefix):
    if isinstance(value, dict) and isinstance(default, dict):
        for key, sub in value.items():
            yield from _overrides(sub, default.get(key, _MISSING), f"{prefix}.{key}")
    elif value != default or default is _MISSING:
        yield f"{prefix}={_override_value(value)}"


_MISSING = object()
DEFAULTS = to_dict(ExperimentConfig())


def cli_args(cfg):
    """``key=value`` overrides that turn icae's defaults into ``cfg`` (only the keys
    that differ from the defaults, so that commands and logs stay readable)."""
    out = []
    for key in (*EXPERIMENT_KEYS, "workflow"):
        if key in cfg:
            out += _overrides(cfg[key], DEFAULTS.get(key, _MISSING), key)
    return " ".join(shlex.quote(o) for o in out)


def tracked(step):
    """params.tracked: the canonical JSON of what can change the job's result."""

    def get(wildcards):
        return canonical(_job(step, wildcards)[1])

    return get


def args(step):
    """params.args: the job's complete config (not tracked)."""

    def get(wildcards):
        cfg, lineage = _job(step, wildcards)
        return Untracked(cli_args(cfg), canonical(lineage))

    return get


REPO_ROOT = Path(workflow.basedir).resolve().parent


def icae_command(step):
    """params.icae: ``env PYTHONPATH=<checkout> K=V ... <python|launcher> -m icae`` (not
    tracked). The checkout holding this workflow comes first on PYTHONPATH, so jobs run
    its icae code with any interpreter (the .venv, a --sdm conda environment)."""

    def get(wildcards):
        pythonpath = shlex.quote(str(REPO_ROOT)) + "${PYTHONPATH:+:$PYTHONPATH}"
        env = [f"PYTHONPATH={pythonpath}"]
        env += [f"{k}={shlex.quote(str(v))}" for k, v in tracking_env(step, wildcards)]
        env += [f"{k}={shlex.quote(str(v))}" for k, v in WF["env"].items()]
        gpus = WF["gpu"].get(step, 0)
        if step in ("pretrain", "finetune") and gpus > 1:
            launcher = WF["multi_gpu_launcher"].format(gpu=gpus)
            # Snakemake sets OMP_NUM_THREADS to the job's threads; each of the launcher's
            # processes gets its share, so the job uses the CPUs it asked for.
            share = f"$(( ${{OMP_NUM_THREADS:-{gpus}}} / {gpus} ))"
            env.append(f"OMP_NUM_THREADS=$(( {share} > 0 ? {share} : 1 ))")
        else:
            launcher = shlex.quote(WF["python"])
        placement = []
        if gpus > 0:
            # Snakemake's gpu resource only counts GPUs; icae.placement picks free devices
            # (lock files) and sets CUDA_VISIBLE_DEVICES, so parallel jobs do not all use
            # cuda:0. It needs only the standard library, so Snakemake's own interpreter
            # runs it whatever workflow.python is.
            placement = [shlex.quote(sys.executable), "-m", "icae.placement"]
            placement += ["--gpus", str(gpus), "--"]
        return Untracked(" ".join(["env", *env, *placement, launcher, "-m", "icae"]))

    return get


def tracking_env(step, wildcards):
    """Run name, group, job type and tags of a training job's wandb run
    (icae.training.tracking reads them; used only with report_to: [wandb])."""
    if step not in ("pretrain", "finetune"):
        return []
    branch = wildcards.branch
    b = BRANCHES[branch]
    if step == "pretrain":
        job, tags = "pretrain", ["pretrain", "icae"]
    else:
        job = f"finetune-{wildcards.dataset}-{wildcards.model_type}"
        tags = ["finetune", wildcards.model_type, wildcards.dataset]
    tags.append(branch)
    if b["layout"] is not None:
        tags += [f"mem{b['mem_size']}", f"rate{fmt_rate(b['rate'])}", b["layout"]]
    return [
        ("ICAE_WANDB_NAME", f"{EXP['run_name']}/{branch}/{job}"),
        ("ICAE_WANDB_GROUP", f"{EXP['run_name']}/{branch}"),
        ("ICAE_WANDB_JOB_TYPE", step),
        ("ICAE_WANDB_TAGS", ",".join(tags)),
    ]


def cleanup(step):
    """params.cleanup: shell command run after the job succeeded (not tracked)."""

    def get(wildcards):
        if WF["keep_resume_checkpoints"]:
            return Untracked("true")
        return Untracked(
            f"rm -rf -- {shlex.quote(_job(step, wildcards)[0][step]['resume_dir'])}"
        )

    return get


def is_local(name):
    return name in WF["local_rules"]


def gpus(step):
    return WF["gpu"][step]


def threads(step):
    """CPU threads of a job (``workflow.threads``). Snakemake sets OMP_NUM_THREADS and
    friends to it (1 when a rule declares none), caps it at ``--cores`` locally, and the
    SLURM plugin requests it as ``--cpus-per-task``: what is asked for is what is used.
    """
    return WF["threads"][step]


def branch_regex(*kinds):
    names = [b for b in BRANCHES if BRANCHES[b]["kind"] in kinds]
    return "|".join(re.escape(b) for b in names) or "(?!x)x"
