"""The Snakemake workflow (workflow/Snakefile).

* fast checks: schema <-> icae/config.py defaults, lint, snakefmt, dry runs of every
  config in configs/, commands that ``icae.config`` parses back into the job's config;
* the full DAG with a stand-in ``icae`` command line (``workflow.python`` points to a
  script that writes the outputs each command promises), then config edits checked by
  dry runs: exactly the dependent jobs are scheduled, logging-only edits schedule
  nothing, a failed training job resumes;
* ``test_full_dag_tiny_model``: the real commands on a tiny random model and tiny data.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PROFILE = REPO / "workflow" / "profiles" / "default"
VENV_BIN = Path(sys.executable).parent


def snakemake(workdir: Path, configfile: Path | None, *args: str, check: bool = True,
              env: dict | None = None, gpus: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir),
           "--workflow-profile", str(PROFILE), "--cores", "2", "--resources", f"gpu={gpus}"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                **(env or {})}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env,
                          cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


_JOB = re.compile(r"^(?:local)?rule (\w+):$")


def scheduled(workdir: Path, configfile: Path, *args: str) -> set[tuple]:
    """Jobs a dry run schedules, as (rule, wildcards...) tuples (``all`` left out)."""
    proc = snakemake(workdir, configfile, "-n", *args)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return set()
    jobs, current = set(), None
    for line in text.splitlines():
        m = _JOB.match(line.strip())
        if m:
            if current:
                jobs.add(current)
            current = (m.group(1),)
        elif current and line.strip().startswith("wildcards:"):
            pairs = line.strip()[len("wildcards:"):].split(",")
            current = current + tuple(sorted(p.strip() for p in pairs))
    if current:
        jobs.add(current)
    jobs = {j for j in jobs if j[0] != "all"}
    assert jobs, text[-4000:]  # neither jobs nor "Nothing to be done": unexpected output
    return jobs


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------
# Schema.


def _schema_defaults(node: dict, root: dict) -> dict:
    """Defaults of every leaf property (following $ref and allOf)."""
    out = {}
    if "$ref" in node:
        ref = root
        for part in node["$ref"][2:].split("/"):
            ref = ref[part]
        out.update(_schema_defaults(ref, root))
    for sub in node.get("allOf", []):
        for key, value in _schema_defaults(sub, root).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            else:
                out[key] = value
    for key, prop in node.get("properties", {}).items():
        if "properties" in prop or "allOf" in prop or "$ref" in prop:
            sub = _schema_defaults(prop, root)
            out[key] = sub if key not in out else {**out[key], **sub}
        elif "default" in prop:
            out[key] = prop["default"]
    return out


def test_schema_matches_dataclasses():
    from icae.config import ExperimentConfig, to_dict

    schema = yaml.safe_load(SCHEMA.read_text())
    defaults = _schema_defaults(schema, schema)
    expected = to_dict(ExperimentConfig())
    expected.pop("workflow")
    defaults.pop("workflow")

    def compare(exp, got, prefix):
        problems = []
        for key in sorted(set(exp) | set(got)):
            where = f"{prefix}{key}"
            if key not in got:
                problems.append(f"{where}: in icae/config.py, missing from the schema")
            elif key not in exp:
                problems.append(f"{where}: in the schema, not in icae/config.py")
            elif isinstance(exp[key], dict):
                problems += compare(exp[key], got[key], f"{where}.")
            elif exp[key] != got[key]:
                problems.append(f"{where}: default {exp[key]!r} in icae/config.py, "
                                f"{got[key]!r} in the schema")
        return problems

    problems = compare(expected, defaults, "")
    assert not problems, ("workflow/schemas/config.schema.yaml is out of sync:\n  "
                          + "\n  ".join(problems))
    # The text source items of data.pretrain.sources.
    source_defaults = _schema_defaults(schema["$defs"]["text_source"], schema)
    from icae.config import TextSource

    assert source_defaults == to_dict(TextSource())


def test_committed_schema_is_the_generated_one():
    """workflow/schemas/config.schema.yaml is generated from icae/config.py
    (`python -m icae schema --out workflow/schemas/config.schema.yaml`)."""
    from icae.schema import render_schema

    assert SCHEMA.read_text(encoding="utf-8") == render_schema(), (
        "workflow/schemas/config.schema.yaml is stale: run "
        "`python -m icae schema --out workflow/schemas/config.schema.yaml`")


def test_schema_bounds_are_the_config_bounds():
    """The three keys whose bounds once disagreed between the schema and validate()."""
    import jsonschema

    from icae.config import ExperimentConfig, config_from_dict, to_dict

    schema = yaml.safe_load(SCHEMA.read_text())
    for section, key, bad, good in [("pretrain", "eval_size", -1, 0),
                                    ("trajectories", "max_observation_tokens", 15, 16),
                                    ("trajectories", "max_turns", 0, 1)]:
        for value, ok in ((bad, False), (good, True)):
            data = to_dict(ExperimentConfig())
            data["data"][section][key] = value
            schema_ok = jsonschema.Draft202012Validator(schema).is_valid(data)
            try:
                config_from_dict(data)
                config_ok = True
            except ValueError:
                config_ok = False
            assert schema_ok == config_ok == ok, (section, key, value, schema_ok, config_ok)


# ---------------------------------------------------------------------------------------
# Lint, format, dry runs of the shipped configs.


def test_lint_and_snakefmt(tmp_path):
    qs = _placeholder_tree(tmp_path)
    proc = snakemake(tmp_path, qs, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    fmt = subprocess.run([str(VENV_BIN / "snakefmt"), "--check", str(REPO / "workflow")],
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_rules_use_the_top_level_conda_env():
    """Every rule's conda: directive names envs/icae.yaml, which lists the package's
    dependencies (same names and bounds as pyproject.toml)."""
    import tomllib

    env_file = REPO / "envs" / "icae.yaml"
    rules = sorted((REPO / "workflow" / "rules").glob("*.smk"))
    n_rules = 0
    for smk in rules:
        text = smk.read_text()
        n_rules += len(re.findall(r"^rule \w+:", text, re.M))
        for rel in re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", text):
            assert (smk.parent / rel).resolve() == env_file, (smk.name, rel)
    conda = sum(smk.read_text().count("conda:") for smk in rules)
    assert conda == n_rules, "a rule without a conda: directive"
    assert not (REPO / "workflow" / "envs").exists()
    pip = yaml.safe_load(env_file.read_text())["dependencies"][-1]["pip"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = [d for d in deps if d not in pip and not d.startswith("snakemake")]
    assert not missing, f"envs/icae.yaml lacks {missing}"


def _placeholder_tree(tmp_path: Path, config: Path | None = None) -> Path:
    """Copy a config into tmp_path with empty placeholders for its local data files."""
    config = config or REPO / "configs" / "quickstart.yaml"
    data = yaml.safe_load(config.read_text())
    d = data.get("data", {})
    paths = [s.get("path") for s in d.get("pretrain", {}).get("sources", [])
             + d.get("pretrain", {}).get("eval_sources", [])]
    paths += [d.get("squad", {}).get(k) for k in ("train_file", "eval_file")]
    paths += [d.get("trajectories", {}).get(k) for k in ("train_file", "eval_file")]
    paths += [d.get("repoqa", {}).get(k) for k in ("release_file", "train_tasks_file")]
    init = (data.get("pretrain") or {}).get("init_checkpoint")
    paths += [f"{init}/checkpoint.json"] if init else []  # the quickstart's shipped checkpoint
    for p in filter(None, paths):
        target = tmp_path / p
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    out = tmp_path / config.name
    shutil.copy(config, out)
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_dry_run(tmp_path, name):
    config = _placeholder_tree(tmp_path, REPO / "configs" / name)
    jobs = scheduled(tmp_path, config)
    rules = {j[0] for j in jobs}
    assert {"prepare_model", "prepare_data", "pretrain", "finetune", "evaluate",
            "aggregate"} <= rules, rules
    data = yaml.safe_load(config.read_text())
    sweep = data.get("workflow", {}).get("sweep", {})
    n_branches = 1
    for key in ("mem_size", "mean_compression_rate", "position_layout", "seed"):
        n_branches *= max(1, len(sweep.get(key) or []))
    assert sum(1 for j in jobs if j[0] == "pretrain") == n_branches


def test_default_config_is_quickstart(tmp_path):
    """Without --configfile the Snakefile loads configs/quickstart.yaml (from the
    working directory); a --configfile replaces it instead of being merged into it."""
    (tmp_path / "configs").mkdir()
    qs = _placeholder_tree(tmp_path)
    shutil.move(qs, tmp_path / "configs" / "quickstart.yaml")
    jobs = scheduled(tmp_path, None)
    assert ("pretrain", "branch=m32-r4-epl-s42") in jobs
    # A partial config file: quickstart's values must not leak in (mem_size 32, data).
    partial = write_config(tmp_path / "partial.yaml", {
        "run_name": "partial", "model": {"mem_size": 8, "max_encoder_tokens": 1024},
        "data": {"squad": {"hf_dataset": "squad"}},
        "workflow": {"model_types": ["llm"], "finetune_datasets": ["squad"],
                     "baselines": []}})
    jobs = scheduled(tmp_path, partial)
    assert {j[0] for j in jobs} == {"prepare_model", "prepare_data", "finetune", "evaluate",
                                    "aggregate"}
    assert ("finetune", "branch=llm-s42", "dataset=squad", "model_type=llm") in jobs


def test_invalid_configs_fail_early(tmp_path):
    qs = _placeholder_tree(tmp_path)
    base = yaml.safe_load(qs.read_text())
    cases = [
        ({"workflow": {"sweep": {"mem_size": [12]}}}, "mem_size: must be a power of two"),
        ({"model": {"mem_sise": 8}}, "mem_sise"),
        ({"workflow": {"finetune_datasets": ["squadd"]}}, "squadd"),
        ({"finetune": {"learning_rate": "fast"}}, "fast"),
        ({"pretrain": {"fsdp": "full_shard"}}, "workflow.gpu.pretrain is 1"),
        ({"finetune": {"fsdp": "zero3"}}, "finetune.fsdp"),
    ]
    for patch, needle in cases:
        data = copy.deepcopy(base)
        for section, values in patch.items():
            data.setdefault(section, {})
            for k, v in values.items():
                if isinstance(v, dict):
                    data[section].setdefault(k, {}).update(v)
                else:
                    data[section][k] = v
        cfg = write_config(tmp_path / "bad.yaml", data)
        proc = snakemake(tmp_path, cfg, "-n", check=False)
        assert proc.returncode != 0, patch
        assert needle in proc.stdout + proc.stderr, (patch, proc.stderr[-3000:])


def test_config_typo_gets_did_you_mean_not_a_schema_dump(tmp_path):
    qs = _placeholder_tree(tmp_path)
    proc = snakemake(tmp_path, qs, "-n", "--config", "finetune={learning_rat: 1.0e-4}",
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "finetune.learning_rat: unknown key; did you mean 'learning_rate'?" in out
    assert len(out.splitlines()) < 15, out
    proc = snakemake(tmp_path, qs, "-n", "--config", "evaluation={batch_size: -3}",
                     check=False)
    out = proc.stdout + proc.stderr
    assert "invalid config: evaluation.batch_size: -3 is less than the minimum" in out, out
    assert len(out.splitlines()) < 15, out


def test_yaml_exponents_and_cli_config_strings(tmp_path):
    """``1e-4`` (a string in YAML 1.1) and --config values are coerced to numbers."""
    qs = _placeholder_tree(tmp_path)
    data = yaml.safe_load(qs.read_text())
    data["finetune"]["learning_rate"] = "3e-5"
    cfg = write_config(tmp_path / "exp.yaml", data)
    proc = snakemake(tmp_path, cfg, "-n", "-p", "--config", "evaluation={batch_size: 2}")
    assert "finetune.learning_rate=3e-05" in proc.stdout
    assert "evaluation.batch_size=2" in proc.stdout


def test_commands_parse_back_into_the_job_config(tmp_path):
    """Every shell command's overrides, read by icae.config.load_config, give the paths
    and sweep values of its branch."""
    from icae.config import load_config

    config = _placeholder_tree(tmp_path, REPO / "configs" / "sweep-example.yaml")
    proc = snakemake(tmp_path, config, "-n", "-p", "--forceall")
    lines = [line for line in proc.stdout.splitlines() if " -m icae " in line]
    commands = [line.split(" -m icae ", 1)[1] for line in lines]
    assert len(commands) > 20
    # Training jobs name their wandb run after the branch and step.
    pre = [line for line in lines if " -m icae pretrain " in line]
    assert pre and all(re.search(r"ICAE_WANDB_NAME=sweep-example/m\d+-r4-\w+-s42/pretrain ",
                                 line) for line in pre), pre[0]
    assert all("ICAE_WANDB_GROUP=sweep-example/m" in line for line in pre)
    ft = [line for line in lines if " -m icae finetune " in line]
    assert ft and all(re.search(r"ICAE_WANDB_NAME=sweep-example/\S+/finetune-\w+-(icae|llm) ",
                                line) for line in ft), ft[0]
    seen = set()
    for command in commands:
        command = command.split(" > ", 1)[0]
        argv = shlex.split(command)
        step, overrides = argv[0], [a for a in argv[1:] if "=" in a and not a.startswith("-")]
        cfg = load_config(None, overrides)
        assert cfg.run_name == "sweep-example"
        assert cfg.model.model_dir == "results/sweep-example/model"
        assert cfg.data.prepared_dir == "results/sweep-example/data"
        if step == "pretrain":
            out = cfg.pretrain.output_dir
            m = re.match(r"results/sweep-example/m(\d+)-r([\d.]+)-(\w+)-s(\d+)/pretrain/final$",
                         out)
            assert m, out
            assert cfg.model.mem_size == int(m[1])
            assert cfg.model.mean_compression_rate == float(m[2])
            assert cfg.model.position_layout == m[3]
            assert cfg.seed == int(m[4])
            assert cfg.model.model_type == "icae"
            assert cfg.pretrain.resume_dir.startswith("results/sweep-example/work/")
            # the job's own resume check ignores what the workflow ignores
            assert "logging_steps" in cfg.workflow["untracked_keys"]
            seen.add((m[1], m[3]))
        if step == "evaluate":
            e = cfg.evaluation
            assert e.output_dir.endswith(f"/eval/{e.variant}/{e.task}")
            if e.variant == "truncate":
                assert e.baseline == "truncate" and cfg.model.model_type == "llm"
        if step == "finetune" and cfg.model.model_type == "icae":
            assert cfg.finetune.init_checkpoint.endswith("/pretrain/final")
            assert cfg.finetune.init_checkpoint.split("/")[2] == cfg.finetune.output_dir.split(
                "/")[2]
    assert seen == {(m, l) for m in ("8", "16") for l in ("default", "linspace", "epl")}


# ---------------------------------------------------------------------------------------
# The full DAG with a stand-in for the icae command line.

FAKE_ICAE = r'''
"""Stand-in for `python -m icae`: writes what each command promises (aggregate is real)."""
import hashlib, json, os, sys
from pathlib import Path

argv = sys.argv[1:]
assert argv[:2] == ["-m", "icae"], argv
cmd, rest = argv[2], argv[3:]
if cmd == "aggregate":
    from icae.cli import main
    sys.exit(main([cmd, *rest]))

from icae.config import dump_config, load_config

import time

cfg = load_config(None, rest)
t0 = time.time()
if cmd == "evaluate":
    time.sleep(float(os.environ.get("FAKE_ICAE_SLEEP", "0")))
with open(os.environ["FAKE_ICAE_CALLS"], "a") as fh:
    fh.write(json.dumps({"cmd": cmd, "env": os.environ.get("FAKE_ICAE_MARK"),
                         "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "omp": os.environ.get("OMP_NUM_THREADS"),
                         "t0": t0, "t1": time.time()}) + "\n")


def number(*parts):
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:8], 16) % 10000 / 100


if cmd == "prepare-model":
    out = Path(cfg.model.model_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"base": cfg.model.base_model}))
elif cmd == "prepare-data":
    assert Path(cfg.model.model_dir, "config.json").is_file()
    for name in cfg.data.build:
        out = Path(cfg.data.prepared_dir) / name
        out.mkdir(parents=True, exist_ok=True)
        for split in ("train", "eval"):
            (out / f"{split}.arrow").write_text(json.dumps({"set": name}) + "\n")
        (out / "summary.json").write_text(json.dumps({"set": name}))
elif cmd in ("pretrain", "finetune"):
    t = getattr(cfg, cmd)
    out, resume = Path(t.output_dir), Path(t.resume_dir)
    assert out.resolve() not in resume.resolve().parents and out != resume
    resumed = (resume / "state.json").is_file()
    resume.mkdir(parents=True, exist_ok=True)
    (resume / "state.json").write_text("{}")
    if os.environ.get("FAKE_ICAE_FAIL") == cmd:
        sys.exit(3)
    if cmd == "finetune" and cfg.model.model_type == "icae":
        assert Path(t.init_checkpoint, "checkpoint.json").is_file()
    out.mkdir(parents=True, exist_ok=True)
    (out / "trained.safetensors").write_bytes(b"weights")
    (out / "checkpoint.json").write_text(json.dumps({
        "model_type": cfg.model.model_type, "mem_size": cfg.model.mem_size,
        "learning_rate": t.learning_rate, "resumed": resumed}))
    (out / "config.yaml").write_text(dump_config(cfg))
    rows = ["step,loss,ae_loss,lm_loss,learning_rate,epoch"]
    rows += [f"{s},{3 - 0.2 * s},,,{t.learning_rate},{s / 5}" for s in range(1, 6)]
    (out / "log.csv").write_text("\n".join(rows) + "\n")
elif cmd == "evaluate":
    e = cfg.evaluation
    out = Path(e.output_dir)
    ckpt = json.loads(Path(e.checkpoint, "checkpoint.json").read_text()) if e.checkpoint else {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text(json.dumps({"prediction": "x"}) + "\n")
    metrics = {"ae": ["bleu1", "token_accuracy"], "qa": ["exact_match", "f1"],
               "repoqa": ["similarity", "pass@0.8"],
               "trajectories": ["ar_bleu1", "tf_loss"]}[e.task]
    dataset = {"ae": "pretrain", "qa": "squad"}.get(e.task, e.task)
    icae = cfg.model.model_type == "icae"
    budget = icae or e.baseline == "truncate"
    head = ("run,variant,model_type,baseline,base_model,task,dataset,mem_size,"
            "compression_rate,position_layout,checkpoint,metric,value,n")
    rows = [head]
    for m in metrics:
        value = number(e.variant, e.task, m, cfg.model.mem_size, cfg.model.position_layout,
                       cfg.seed, ckpt.get("learning_rate"))
        rows.append(",".join(map(str, [
            cfg.run_name, e.variant, cfg.model.model_type, e.baseline, "tiny", e.task,
            dataset, cfg.model.mem_size if budget else "",
            cfg.model.mean_compression_rate if budget else "",
            cfg.model.position_layout if icae else "", e.checkpoint or "", m, value, 4])))
    (out / "metrics.csv").write_text("\n".join(rows) + "\n")
    (out / "summary.json").write_text(json.dumps({"variant": e.variant}))
else:
    raise SystemExit(f"unexpected command {cmd}")
'''


@pytest.fixture
def stub_run(tmp_path):
    """A tiny config whose `python` is the stand-in; samples are empty placeholders."""
    fake = tmp_path / "fake_icae.py"
    fake.write_text(FAKE_ICAE)
    wrapper = tmp_path / "fakepython"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    wrapper.chmod(0o755)
    qs = _placeholder_tree(tmp_path)
    data = yaml.safe_load(qs.read_text())
    data["run_name"] = "tiny"
    data["workflow"]["python"] = str(wrapper)
    data["workflow"]["env"] = {"FAKE_ICAE_CALLS": str(tmp_path / "calls.jsonl")}
    data["model"]["base_model"] = str(tmp_path / "no-model-needed")
    # Independent of the quickstart's model: mem 16, and a pre-training that trains (the
    # quickstart adopts its shipped checkpoint instead).
    data["model"]["mem_size"] = 16
    data["pretrain"].pop("init_checkpoint", None)
    data["pretrain"]["max_steps"] = 8
    data["workflow"].update(model_types=["icae", "llm"],
                            finetune_datasets=["squad", "repoqa", "trajectories"],
                            baselines=["base", "truncate", "no_context"],
                            pretrained_tasks=["ae", "qa", "repoqa", "trajectories"])
    return tmp_path, data


def _expected_jobs(data: dict) -> set[tuple]:
    ds = data["workflow"]["finetune_datasets"]
    task = {"squad": "qa", "repoqa": "repoqa", "trajectories": "trajectories"}
    b, bb, lb = "branch=m16-r4-epl-s42", "branch=m16-r4-s42", "branch=llm-s42"
    jobs = {("prepare_model",), ("aggregate",), ("pretrain", b)}
    jobs |= {("prepare_data", f"dataset={d}") for d in ["pretrain", *ds]}
    for d in ds:
        for mt, br in (("icae", b), ("llm", lb)):
            jobs.add(("finetune", br, f"dataset={d}", f"model_type={mt}"))
            jobs.add(("evaluate", br, f"task={task[d]}", f"variant={mt}-ft-{d}"))
        jobs.add(("evaluate", b, f"task={task[d]}", "variant=icae-pretrained"))
        jobs.add(("evaluate", bb, f"task={task[d]}", "variant=truncate"))
        jobs.add(("evaluate", lb, f"task={task[d]}", "variant=base"))
        jobs.add(("evaluate", lb, f"task={task[d]}", "variant=no_context"))
    jobs.add(("evaluate", b, "task=ae", "variant=icae-pretrained"))
    return jobs


@pytest.mark.slow
def test_stub_dag_outputs_and_reruns(stub_run):
    tmp_path, data = stub_run
    cfg = write_config(tmp_path / "tiny.yaml", data)
    expected = _expected_jobs(data)
    assert len([j for j in expected if j[0] == "evaluate"]) == 19
    assert scheduled(tmp_path, cfg) == expected

    snakemake(tmp_path, cfg)
    run = tmp_path / "results" / "tiny"
    b = run / "m16-r4-epl-s42"
    for path in [run / "model" / "config.json",
                 *(run / "data" / s / f for s in ("pretrain", "squad", "repoqa", "trajectories")
                   for f in ("train.arrow", "eval.arrow", "summary.json")),
                 *(b / "pretrain" / "final" / f for f in ("trained.safetensors",
                                                          "checkpoint.json", "config.yaml",
                                                          "log.csv")),
                 b / "finetune" / "squad-icae" / "final" / "trained.safetensors",
                 run / "llm-s42" / "finetune" / "trajectories-llm" / "final" / "log.csv",
                 b / "eval" / "icae-pretrained" / "ae" / "predictions.jsonl",
                 run / "m16-r4-s42" / "eval" / "truncate" / "qa" / "metrics.csv",
                 run / "llm-s42" / "eval" / "base" / "repoqa" / "summary.json",
                 run / "benchmarks" / "m16-r4-epl-s42" / "pretrain.tsv",
                 tmp_path / "logs" / "tiny" / "m16-r4-epl-s42" / "pretrain.log",
                 *(run / "tables" / f for f in ("metrics_long.csv", "metrics_wide.csv")),
                 *(run / "tables" / f"{t}.{ext}" for t in ("ae", "qa", "repoqa",
                                                           "trajectories", "summary")
                   for ext in ("tex", "md", "csv")),
                 *(run / "tables" / "plots" / f"qa_by_method.{ext}"
                   for ext in ("png", "pdf", "svg")),
                 run / "tables" / "plots" / "training_loss.pdf"]:
        assert path.exists(), path
    # Resume folders live outside the outputs and are removed after success.
    assert not any((run / "work").rglob("state.json"))
    _check_tables(run)

    assert scheduled(tmp_path, cfg) == set()

    def edit(mutate):
        new = copy.deepcopy(data)
        mutate(new)
        return write_config(tmp_path / "edited.yaml", new)

    # Logging-only settings, interpreter and environment: nothing reruns.
    def logging_only(c):
        c["pretrain"]["logging_steps"] = 7
        c["pretrain"]["progress"] = True
        c["finetune"]["report_to"] = ["wandb"]
        c["finetune"]["dataloader_num_workers"] = 3
        c["finetune"]["save_steps"] = 2
        c["evaluation"]["progress"] = True
        c["workflow"]["env"]["WANDB_MODE"] = "offline"
        c["workflow"]["keep_resume_checkpoints"] = True
    assert scheduled(tmp_path, edit(logging_only)) == set()

    # finetune.learning_rate: every fine-tune, their evaluations, the tables.
    lr = edit(lambda c: c["finetune"].update(learning_rate=1.0e-5))
    ft_jobs = {j for j in expected if j[0] == "finetune"
               or (j[0] == "evaluate" and "-ft-" in j[-1])} | {("aggregate",)}
    assert scheduled(tmp_path, lr) == ft_jobs

    # pretrain.learning_rate: pretrain and everything ICAE downstream, not the LLM.
    plr = edit(lambda c: c["pretrain"].update(learning_rate=3.0e-4))
    icae_jobs = {j for j in expected if "branch=m16-r4-epl-s42" in j} | {("aggregate",)}
    assert scheduled(tmp_path, plr) == icae_jobs

    # evaluation.max_new_tokens: every evaluation and the tables, no training.
    ev = edit(lambda c: c["evaluation"].update(max_new_tokens=8))
    assert scheduled(tmp_path, ev) == {j for j in expected if j[0] in ("evaluate",
                                                                     "aggregate")}

    # data.squad: the squad set and everything that reads it.
    sq = edit(lambda c: c["data"]["squad"].update(eval_size=4))
    squad = {("prepare_data", "dataset=squad")} | {
        j for j in expected if "dataset=squad" in j or "task=qa" in j} | {("aggregate",)}
    assert scheduled(tmp_path, sq) == squad

    # Editing a source file of a data set rebuilds it.
    with (tmp_path / data["data"]["squad"]["eval_file"]).open("a") as fh:
        fh.write("{}\n")
    assert scheduled(tmp_path, cfg) == squad
    snakemake(tmp_path, cfg)

    # A sweep value adds its branch (and its budget baseline) only.
    sweep = edit(lambda c: c["workflow"].update(sweep={"position_layout": ["epl", "default"]}))
    new_branch = {
        tuple(w.replace("m16-r4-epl-s42", "m16-r4-default-s42") for w in j)
        for j in expected if "branch=m16-r4-epl-s42" in j}
    assert scheduled(tmp_path, sweep) == new_branch | {("aggregate",)}

    # Tables options rerun the aggregation only.
    tb = edit(lambda c: c["workflow"].update(tables={"metrics": ["f1"], "decimals": 1}))
    assert scheduled(tmp_path, tb) == {("aggregate",)}


def _check_tables(run: Path):
    """Every metric file's rows are in metrics_long.csv and its values in the wide table."""
    files = sorted(run.glob("*/eval/*/*/metrics.csv"))
    assert len(files) == 19
    long = pd.read_csv(run / "tables" / "metrics_long.csv")
    wide = pd.read_csv(run / "tables" / "metrics_wide.csv")
    assert len(long) == sum(len(pd.read_csv(f)) for f in files)
    for column in ("squad/f1", "squad/exact_match", "pretrain/bleu1", "repoqa/similarity",
                   "trajectories/ar_bleu1"):
        assert column in wide.columns, column
    for f in files:
        for row in pd.read_csv(f).itertuples():
            if f"{row.dataset}/{row.metric}" not in wide.columns:
                continue  # not a headline metric (workflow.tables.metrics)
            sel = wide["variant"] == row.variant
            for col, value in (("mem_size", row.mem_size),
                               ("compression_rate", row.compression_rate),
                               ("position_layout", row.position_layout)):
                sel &= wide[col].isna() if pd.isna(value) else wide[col] == value
            cell = wide.loc[sel, f"{row.dataset}/{row.metric}"]
            assert cell.tolist() == [pytest.approx(row.value, nan_ok=True)], (f, row)
    qa = (run / "tables" / "qa.tex").read_text()
    assert "\\label{tab:tiny-qa}" in qa and "\\toprule" in qa and "F1 $\\uparrow$" in qa
    rows = qa.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0].strip().splitlines()
    assert len(rows) == len(wide[wide[[c for c in wide.columns if c.startswith("squad/")]]
                                 .notna().any(axis=1)])


@pytest.mark.slow
def test_failed_training_resumes(stub_run):
    tmp_path, data = stub_run
    data["workflow"].update(model_types=["icae"], finetune_datasets=["squad"], baselines=[],
                            pretrained_tasks=["ae"])
    failing = copy.deepcopy(data)
    failing["workflow"]["env"]["FAKE_ICAE_FAIL"] = "pretrain"
    proc = snakemake(tmp_path, write_config(tmp_path / "fail.yaml", failing), check=False)
    assert proc.returncode != 0
    run = tmp_path / "results" / "tiny"
    assert not (run / "m16-r4-epl-s42" / "pretrain" / "final" / "checkpoint.json").exists()
    states = list((run / "work" / "m16-r4-epl-s42").glob("pretrain-*/state.json"))
    assert len(states) == 1
    # Same config (the failure switch is an untracked env var): the job resumes.
    snakemake(tmp_path, write_config(tmp_path / "ok.yaml", data))
    meta = json.loads((run / "m16-r4-epl-s42" / "pretrain" / "final" /
                       "checkpoint.json").read_text())
    assert meta["resumed"] is True
    assert not states[0].exists()  # cleaned up after success


@pytest.mark.slow
def test_parallel_gpu_jobs_get_their_own_device_and_threads(stub_run):
    """A fake two-GPU machine: with --resources gpu=2, evaluations run two at a time,
    each with its own CUDA_VISIBLE_DEVICES; every job gets its rule's threads."""
    tmp_path, data = stub_run
    data["workflow"].update(model_types=["llm"], finetune_datasets=["squad", "repoqa"],
                            baselines=["base", "no_context"], pretrained_tasks=[])
    data["workflow"]["env"]["FAKE_ICAE_SLEEP"] = "1.5"
    data["workflow"]["threads"] = {"evaluate": 2, "finetune": 4}
    # Fine-tunes take both GPUs through the multi-GPU launcher (here the stand-in).
    data["workflow"]["gpu"] = {"finetune": 2}
    data["workflow"]["multi_gpu_launcher"] = data["workflow"]["python"]
    cfg = write_config(tmp_path / "gpus.yaml", data)
    snakemake(tmp_path, cfg, "--cores", "4", "--resources", "gpu=2",
              env={"CUDA_VISIBLE_DEVICES": "0,1",
                   "ICAE_GPU_LOCK_DIR": str(tmp_path / "locks")})
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    evals = [c for c in calls if c["cmd"] == "evaluate"]
    assert len(evals) == 6
    assert all(c["cuda"] in ("0", "1") for c in evals), evals
    overlapping = [(a, b) for i, a in enumerate(evals) for b in evals[i + 1:]
                   if a["t0"] < b["t1"] and b["t0"] < a["t1"]]
    assert overlapping, "no two evaluations ran at the same time"
    assert all(a["cuda"] != b["cuda"] for a, b in overlapping), overlapping
    assert {c["cuda"] for c in evals} == {"0", "1"}
    omp = {c["cmd"]: c["omp"] for c in calls}
    # 4 threads shared by the launcher's 2 processes.
    assert omp["evaluate"] == "2" and omp["finetune"] == "2", omp
    assert {c["cuda"] for c in calls if c["cmd"] == "finetune"} in ({"0,1"}, {"1,0"})
    # CPU-only rules are not placed on a device.
    assert {c["cuda"] for c in calls if c["cmd"] == "prepare-data"} == {"0,1"}


@pytest.mark.slow
def test_report(stub_run):
    tmp_path, data = stub_run
    data["workflow"].update(finetune_datasets=["squad"], baselines=["base"],
                            pretrained_tasks=["ae"])
    cfg = write_config(tmp_path / "tiny.yaml", data)
    snakemake(tmp_path, cfg)
    snakemake(tmp_path, cfg, "--report", "report.html")
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "summary.tex" in html and "qa.md" in html and "training_loss" in html


# ---------------------------------------------------------------------------------------
# The real thing (needs the icae commands: prepare-model, prepare-data, pretrain,
# finetune, evaluate).


def _have_commands() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in (
        "icae.prepare_model", "icae.data.prepare", "icae.training.run", "icae.evaluation.run"))


SAMPLES = REPO / "data" / "samples"


def _tiny_data() -> dict:
    """The shipped samples (data/samples/), cut to a few examples; RepoQA tasks are cut
    from this package's code (the shipped tasks are sized for a real tokenizer)."""
    return {
        "pretrain": {"sources": [{"path": str(SAMPLES / "pretrain" / "train.jsonl.gz")}],
                     "eval_sources": [{"path": str(SAMPLES / "pretrain" / "eval.jsonl.gz")}],
                     "min_len": 32, "token_num": 1000, "eval_size": 2},
        "squad": {"train_file": str(SAMPLES / "squad" / "train-v1.1-sample.json"),
                  "eval_file": str(SAMPLES / "squad" / "dev-v1.1-sample.json"),
                  "train_size": 4, "eval_size": 2},
        "repoqa": {"source_dirs": [str(REPO / "icae")], "languages": ["python"],
                   "context_tokens": 512, "position_ratios": [0.5], "num_train": 4,
                   "num_eval": 2},
        "trajectories": {"train_file": str(SAMPLES / "trajectories" / "train.jsonl.gz"),
                         "eval_file": str(SAMPLES / "trajectories" / "eval.jsonl.gz"),
                         "compress_threshold": 8, "max_turns": 2,
                         "max_observation_tokens": 64, "max_target_tokens": 16,
                         "max_trajectories_train": 2, "max_trajectories_eval": 1},
    }


@pytest.mark.slow
@pytest.mark.skipif(not _have_commands(), reason="the icae commands are not implemented yet")
def test_full_dag_tiny_model(tmp_path):
    """The whole DAG with the real commands on a tiny random model (CPU, minutes), then a
    config change checked by a dry run."""
    from icae.testing import save_tiny_model_dir

    model = save_tiny_model_dir(tmp_path / "tiny-model")
    data = {
        "run_name": "tiny",
        "seed": 0,
        "model": {"base_model": str(model), "mem_size": 4, "mean_compression_rate": 4,
                  "position_layout": "epl", "max_encoder_tokens": 256, "lora_r": 4,
                  "lora_alpha": 8, "lora_dropout": 0.0},
        "data": _tiny_data(),
        "pretrain": {"max_steps": 2, "max_length": 256, "save_steps": 1, "logging_steps": 1,
                     "progress": False, "ae_bleu_samples": 1},
        "finetune": {"max_steps": 2, "max_length": 1024, "save_steps": 1, "logging_steps": 1,
                     "progress": False},
        "evaluation": {"batch_size": 2, "max_new_tokens": 4, "num_samples": 2,
                       "max_turns_per_trajectory": 1, "progress": False},
        # One thread per job and two "GPU" jobs at a time: on CPU each job of this tiny
        # model spends most of its time importing torch and transformers on one core, so
        # two overlap well on a 2-core machine (the DAG and commands are the same).
        "workflow": {"env": {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"},
                     "threads": {step: 1 for step in ("prepare_model", "prepare_data",
                                                      "pretrain", "finetune", "evaluate",
                                                      "aggregate")}},
    }
    cfg = write_config(tmp_path / "tiny.yaml", data)
    expected = _expected_jobs({"workflow": {"finetune_datasets": ["squad", "repoqa",
                                                                  "trajectories"]}})
    expected = {tuple(w.replace("m16-r4", "m4-r4").replace("-s42", "-s0") for w in j)
                for j in expected}
    assert scheduled(tmp_path, cfg) == expected
    snakemake(tmp_path, cfg, "--show-failed-logs", gpus=2)
    run = tmp_path / "results" / "tiny"
    for f in ("trained.safetensors", "checkpoint.json", "config.yaml", "log.csv"):
        assert (run / "m4-r4-epl-s0" / "pretrain" / "final" / f).is_file(), f
    for f in ("predictions.jsonl", "metrics.csv", "summary.json"):
        assert (run / "m4-r4-epl-s0" / "eval" / "icae-ft-squad" / "qa" / f).is_file(), f
    assert not any((run / "work").rglob("*.safetensors"))
    _check_tables(run)
    assert (run / "tables" / "plots" / "training_loss.png").is_file()

    data["finetune"]["learning_rate"] = 1.0e-5
    lr = write_config(tmp_path / "lr.yaml", data)
    assert scheduled(tmp_path, lr) == {j for j in expected if j[0] == "finetune" or (
        j[0] == "evaluate" and "-ft-" in j[-1])} | {("aggregate",)}
    data["finetune"]["learning_rate"] = 5.0e-5
    data["finetune"]["logging_steps"] = 5
    data["evaluation"]["progress"] = True
    assert scheduled(tmp_path, write_config(tmp_path / "log.yaml", data)) == set()
