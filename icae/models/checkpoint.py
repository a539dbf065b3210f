"""Checkpoints of trained parameters only (LoRA weights and learned embeddings).

A checkpoint folder holds ``trained.safetensors``, ``checkpoint.json`` (what the weights
belong to: model type, base model and its shape, memory size, adapter settings, tensor
shapes, a fingerprint of the base model) and ``config.yaml`` (the resolved experiment
config). Loading checks all of it and names the first mismatch.

The base-model fingerprint (``base_fingerprint``) identifies the weights the adapters were
trained on, not only their name: the config's architecture fields plus a probe of 64
values from each of a few base tensors (input and output embeddings, the middle layer's
first matrix). Probes compare with a relative tolerance of 2**-7, so loading the same
weights in float32, bfloat16 or float16 matches while another model of the same shape (a
differently trained or fine-tuned one) does not. Checkpoints written before the
fingerprint existed load with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from icae.models.objectives import MARKERS_BEFORE_RECALL
from icae.utils import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "trained.safetensors"
META = "checkpoint.json"

# Config fields that define the architecture (what a different model of the same name or
# a re-export could change); anything else in config.json (dtype, paths, versions) is not.
_ARCH_FIELDS = ("model_type", "architectures", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "max_position_embeddings", "rope_theta", "rope_scaling",
                "rope_parameters", "rms_norm_eps", "layer_norm_eps", "hidden_act",
                "tie_word_embeddings", "sliding_window", "partial_rotary_factor")
_PROBE_VALUES = 64
_PROBE_RTOL = 2.0 ** -7  # above float16 / bfloat16 rounding (and their double rounding)


def _json_value(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in sorted(v.items())}
    return str(v)


def _probe_tensors(base) -> list[tuple[str, torch.Tensor]]:
    out = [("input_embeddings", base.get_input_embeddings().weight)]
    head = base.get_output_embeddings()
    if head is not None and head.weight is not out[0][1]:
        out.append(("output_embeddings", head.weight))
    n_layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
    middle = f"layers.{n_layers // 2}."
    for name, p in sorted(base.named_parameters()):
        name = name.replace("base_layer.", "")
        if middle in name and "lora_" not in name and p.dim() == 2:
            out.append((name[name.index(middle):], p))
            break
    return out


def probe_index(numel: int, count: int = _PROBE_VALUES) -> torch.Tensor:
    """``count`` evenly spread indices into ``numel`` elements, first and last included,
    in exact integer arithmetic (float32 linspace rounds past the end of a 28M-element
    embedding matrix)."""
    if numel <= 0:
        return torch.zeros(0, dtype=torch.long)
    count = min(count, numel)
    if count == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.arange(count, dtype=torch.long) * (numel - 1) // (count - 1)


def base_fingerprint(model) -> dict:
    """Architecture fields and weight probes of ``model``'s base (computed once)."""
    cached = getattr(model, "_base_fingerprint", None)
    if cached is not None:
        return cached
    base = model.base
    cfg = base.config.to_dict()
    fields = {k: _json_value(cfg[k]) for k in _ARCH_FIELDS if k in cfg}
    probes = {}
    with torch.no_grad():
        for name, weight in _probe_tensors(base):
            flat = weight.detach().reshape(-1)
            idx = probe_index(flat.numel())
            probes[name] = [float(x) for x in flat[idx.to(flat.device)].float().cpu()]
    fp = {"config": fields, "probes": probes}
    try:
        model._base_fingerprint = fp
    except AttributeError:
        pass
    return fp


def compare_fingerprints(saved: dict, mine: dict) -> str | None:
    """Why ``saved`` is not the fingerprint of the same base weights as ``mine`` (or None)."""
    for key, value in saved.get("config", {}).items():
        if key in mine["config"] and mine["config"][key] != value:
            return f"base config.json {key} is {value!r} in the checkpoint but " \
                   f"{mine['config'][key]!r} here"
    for name, values in saved.get("probes", {}).items():
        here = mine["probes"].get(name)
        if here is None or len(here) != len(values):
            return f"base weights have no tensor {name!r} to compare"
        a, b = torch.tensor(values), torch.tensor(here)
        bad = ((a - b).abs() > _PROBE_RTOL * a.abs() + 1e-12).nonzero()
        if len(bad):
            i = int(bad[0])
            return (f"base weights differ ({name}[probe {i}] is {values[i]:.6g} in the "
                    f"checkpoint but {here[i]:.6g} here): a different model of the same shape")
    return None


def describe(model) -> dict:
    cfg = model.cfg
    base_cfg = model.base.config
    return {
        "format_version": FORMAT_VERSION,
        "model_type": cfg.model_type,
        "base_model": cfg.base_model,
        "revision": cfg.revision,
        "base_architecture": type(model.base).__name__,
        "hidden_size": int(base_cfg.hidden_size),
        "num_hidden_layers": int(base_cfg.num_hidden_layers),
        "vocab_size": int(model.vocab_size),
        "mem_size": cfg.mem_size if cfg.model_type == "icae" else None,
        "lora_r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "lora_target_modules": list(cfg.lora_target_modules),
        "train_decoder": bool(cfg.train_decoder),
        "position_layout": cfg.position_layout,
        "mean_compression_rate": cfg.mean_compression_rate,
        "slot_rule": cfg.slot_rule,
        "memory_scale": cfg.memory_scale,
        "tensors": {n: list(t.shape) for n, t in model.trainable_state_dict().items()},
        "base_fingerprint": base_fingerprint(model),
    }


def write_trained(model, directory: str | Path, extra: dict | None = None) -> None:
    """The trained parameters, their description and the portable copies (peft adapter
    folders, embeddings, tokenizer: ``icae/models/portable.py``) into ``directory``."""
    from icae.models.portable import write_portable

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {n: t.detach().to("cpu").contiguous()
             for n, t in model.trainable_state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    write_portable(model, directory)
    meta = describe(model)
    if extra:
        meta.update(extra)
    atomic_write_json(directory / META, meta)


def save_checkpoint(model, directory: str | Path, config_text: str | None = None,
                    extra: dict | None = None, extra_files: dict[str, str] | None = None
                    ) -> Path:
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_trained(model, tmp, extra)
        if config_text is not None:
            (tmp / "config.yaml").write_text(config_text, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return directory


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint metadata ({exc}); the checkpoint "
                         "was not written completely: retrain or restore it") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt checkpoint metadata (not a JSON object)")
    return meta


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file; a truncated or corrupt one is a ValueError naming it."""
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... all mean corrupt
        raise ValueError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc}); "
                         "the file is truncated or corrupt: retrain or restore it") from None


_CHECKED = ("model_type", "base_architecture", "hidden_size", "num_hidden_layers",
            "vocab_size", "mem_size", "lora_r", "lora_alpha", "lora_target_modules",
            "train_decoder")
# What the trained weights mean for ICAE only (the plain LLM reads contexts as text).
_CHECKED_ICAE = ("position_layout", "mean_compression_rate", "slot_rule", "memory_scale")
# The settings of model.* a checkpoint fixes; checked before anything is loaded.
SETTINGS = ("model_type", "mem_size", "lora_r", "lora_alpha", "lora_target_modules",
            "train_decoder", "position_layout", "mean_compression_rate", "slot_rule",
            "memory_scale")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return float(a) == float(b)
    return a == b


def check_settings(meta: dict, model_cfg, where: str) -> None:
    """ValueError naming the first ``model.*`` setting that differs from the checkpoint's.

    One rule in every command (finetune from ``init_checkpoint``, evaluate, resume): the
    checkpoint's settings are not adopted silently, a different value fails."""
    keys = [k for k in SETTINGS if k not in _CHECKED_ICAE or meta.get("model_type") == "icae"]
    for key in keys:
        if key not in meta:
            continue  # older checkpoints lack some keys
        mine = getattr(model_cfg, key)
        if key == "lora_target_modules":
            mine = list(mine)
        if key == "mem_size" and model_cfg.model_type != "icae":
            mine = None
        if not _same(meta[key], mine):
            raise ValueError(
                f"checkpoint {where} was trained with model.{key}={meta[key]!r}, but "
                f"model.{key}={mine!r} here; set model.{key}={meta[key]} to use it")


def load_checkpoint(model, directory: str | Path, strict_base_name: bool = False) -> dict:
    """Load trained parameters into ``model``; ValueError naming any mismatch."""
    directory = Path(directory)
    meta = read_meta(directory)
    from icae.models.portable import has_portable, state_from_portable

    if not (directory / WEIGHTS).is_file() and not has_portable(directory):
        raise FileNotFoundError(f"{directory}: {WEIGHTS} is missing")
    mine = describe(model)
    keys = _CHECKED + (_CHECKED_ICAE if mine["model_type"] == "icae" else ())
    for key in keys:
        if key not in meta and key in ("lora_alpha",) + _CHECKED_ICAE:
            continue  # not recorded by older checkpoints
        if not _same(meta.get(key), mine.get(key)):
            raise ValueError(
                f"checkpoint {directory} does not fit this model: {key} is "
                f"{meta.get(key)!r} in the checkpoint but {mine.get(key)!r} here")
    if "base_fingerprint" in meta:
        why = compare_fingerprints(meta["base_fingerprint"], mine["base_fingerprint"])
        if why:
            raise ValueError(f"checkpoint {directory} was trained on another base model than "
                             f"{mine['base_model']!r}: {why}")
    else:
        log.warning("checkpoint %s records no base-model fingerprint (written by an older "
                    "version): cannot check that it was trained on these base weights",
                    directory)
    if strict_base_name and meta.get("base_model") != mine["base_model"]:
        raise ValueError(f"checkpoint {directory} was trained on base model "
                         f"{meta.get('base_model')!r}, not {mine['base_model']!r}")
    state = (read_weights(directory / WEIGHTS) if (directory / WEIGHTS).is_file()
             else state_from_portable(model, directory))
    params = dict(model.named_parameters())
    expected = set(mine["tensors"])
    missing = expected - set(state)
    unexpected = set(state) - expected
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory}: missing tensors {sorted(missing)[:3]}, "
                         f"unexpected tensors {sorted(unexpected)[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            p = params[name]
            if name == "extra_embeddings" and _fewer_markers(model, p, tensor):
                # Written before later markers (e.g. [RECALL]) existed: those keep their
                # initial rows, and trained_markers does not list them.
                p[:tensor.shape[0]].copy_(tensor.to(p.dtype))
                continue
            if tuple(p.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint {directory}: tensor {name} has shape "
                                 f"{tuple(tensor.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(tensor.to(p.dtype))
    return meta


def _fewer_markers(model, param, tensor) -> bool:
    """Whether ``tensor`` is an ``extra_embeddings`` of an older version: the same memory
    slots and the first markers, fewer than the model's."""
    rows = int(getattr(model, "mem_size", 0)) + len(MARKERS_BEFORE_RECALL)
    return (tensor.dim() == 2 and tensor.shape[1] == param.shape[1]
            and rows <= tensor.shape[0] < param.shape[0])


def trained_markers(meta: dict, directory: str | Path | None = None) -> frozenset[str]:
    """The learned markers ([AE], [LM], [FT], [RECALL]) whose embeddings a checkpoint
    trained.

    New checkpoints record ``trained_markers`` (the markers in the training examples of
    every stage that led to them, see :mod:`icae.training.run`). For older ones without
    the key: ``stage: finetune`` is assumed to have trained [AE], [LM] and [FT] (the fine-tune
    started from a pre-trained ICAE, the workflow's only path); ``stage: pretrain`` (or no
    stage) [AE] and [LM], narrowed by the ``data.pretrain.lm_ratio`` of its ``config.yaml``
    when that is readable (0: [AE] only, 1: [LM] only). The plain LLM has no markers.
    """
    if "trained_markers" in meta:
        return frozenset(str(m) for m in meta["trained_markers"])
    if meta.get("model_type") != "icae":
        return frozenset()
    if meta.get("stage") == "finetune":
        return frozenset(MARKERS_BEFORE_RECALL)
    ratio = 0.5
    if directory is not None and (Path(directory) / "config.yaml").is_file():
        import yaml

        try:
            cfg = yaml.safe_load((Path(directory) / "config.yaml").read_text("utf-8")) or {}
            ratio = float(cfg.get("data", {}).get("pretrain", {}).get("lm_ratio", 0.5))
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            ratio = 0.5
    return frozenset(m for m, used in (("ae", ratio < 1), ("lm", ratio > 0)) if used)
