"""Checkpoints of trained parameters only (LoRA weights and learned embeddings).

A checkpoint folder holds ``trained.safetensors``, ``checkpoint.json`` (what the weights
belong to: model type, base model and its shape, memory size, adapter settings, tensor
shapes) and ``config.yaml`` (the resolved experiment config). Loading checks all of it
and names the first mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from icae.utils import atomic_directory, atomic_write_json

FORMAT_VERSION = 1
WEIGHTS = "trained.safetensors"
META = "checkpoint.json"


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
        "tensors": {n: list(t.shape) for n, t in model.trainable_state_dict().items()},
    }


def save_checkpoint(model, directory: str | Path, config_text: str | None = None,
                    extra: dict | None = None, extra_files: dict[str, str] | None = None
                    ) -> Path:
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        state = {n: t.detach().to("cpu").contiguous()
                 for n, t in model.trainable_state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        meta = describe(model)
        if extra:
            meta.update(extra)
        atomic_write_json(tmp / META, meta)
        if config_text is not None:
            (tmp / "config.yaml").write_text(config_text, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return directory


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint (no {META})")
    return json.loads(path.read_text(encoding="utf-8"))


_CHECKED = ("model_type", "base_architecture", "hidden_size", "num_hidden_layers",
            "vocab_size", "mem_size", "lora_r", "lora_target_modules", "train_decoder")


def load_checkpoint(model, directory: str | Path, strict_base_name: bool = False) -> dict:
    """Load trained parameters into ``model``; ValueError naming any mismatch."""
    directory = Path(directory)
    meta = read_meta(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS} is missing")
    mine = describe(model)
    for key in _CHECKED:
        if meta.get(key) != mine.get(key):
            raise ValueError(
                f"checkpoint {directory} does not fit this model: {key} is "
                f"{meta.get(key)!r} in the checkpoint but {mine.get(key)!r} here")
    if strict_base_name and meta.get("base_model") != mine["base_model"]:
        raise ValueError(f"checkpoint {directory} was trained on base model "
                         f"{meta.get('base_model')!r}, not {mine['base_model']!r}")
    state = load_file(str(directory / WEIGHTS))
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
            if tuple(p.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint {directory}: tensor {name} has shape "
                                 f"{tuple(tensor.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(tensor.to(p.dtype))
    return meta


def trained_markers(meta: dict, directory: str | Path | None = None) -> frozenset[str]:
    """The learned markers ([AE], [LM], [FT]) whose embeddings a checkpoint trained.

    New checkpoints record ``trained_markers`` (the markers in the training examples of
    every stage that led to them, see :mod:`icae.training.run`). For older ones without
    the key: ``stage: finetune`` is assumed to have trained all three (the fine-tune
    started from a pre-trained ICAE, the workflow's only path); ``stage: pretrain`` (or no
    stage) [AE] and [LM], narrowed by the ``data.pretrain.lm_ratio`` of its ``config.yaml``
    when that is readable (0: [AE] only, 1: [LM] only). The plain LLM has no markers.
    """
    if "trained_markers" in meta:
        return frozenset(str(m) for m in meta["trained_markers"])
    if meta.get("model_type") != "icae":
        return frozenset()
    if meta.get("stage") == "finetune":
        return frozenset(("ae", "lm", "ft"))
    ratio = 0.5
    if directory is not None and (Path(directory) / "config.yaml").is_file():
        import yaml

        try:
            cfg = yaml.safe_load((Path(directory) / "config.yaml").read_text("utf-8")) or {}
            ratio = float(cfg.get("data", {}).get("pretrain", {}).get("lm_ratio", 0.5))
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            ratio = 0.5
    return frozenset(m for m, used in (("ae", ratio < 1), ("lm", ratio > 0)) if used)
