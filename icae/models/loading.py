"""Loading the base model and tokenizer from a materialised directory (or a hub id)."""

from __future__ import annotations

from pathlib import Path

import torch

from icae.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def is_local_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def resolve_model_path(cfg: ModelConfig) -> str:
    """Where to load the base model from: the prepared ``model_dir`` when it exists, else
    ``base_model`` itself when it is a local directory or a hub id."""
    if is_local_model_dir(cfg.model_dir):
        return cfg.model_dir
    spec = cfg.base_model
    if is_local_model_dir(spec):
        return spec
    if spec.startswith("pypi:") or spec.endswith(".gguf") or Path(spec).exists():
        raise FileNotFoundError(
            f"model.model_dir={cfg.model_dir!r} holds no prepared model; run "
            f"`python -m icae prepare-model --config ...` first (model.base_model={spec!r})")
    return spec  # a hub id: transformers downloads it where the hub is reachable


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if tok.pad_token_id is None:
        # Padding is always masked out; any existing id will do.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_base_model(cfg: ModelConfig):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision if path == cfg.base_model else None,
            dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation)
    except OSError as exc:
        raise OSError(
            f"cannot load base model {path!r}: {exc}. If this is a Hugging Face hub id, the "
            "hub must be reachable (or prepare the model elsewhere and set model.model_dir)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - SafetensorError, JSON errors, ...: corrupt files
        if not is_local_model_dir(path):
            raise
        from icae.prepare_model import verify_weights

        problems = verify_weights(Path(path)) or [f"{type(exc).__name__}: {exc}"]
        raise ValueError(
            f"cannot load base model from {path}: {'; '.join(problems)}. Delete {path} and "
            "run `python -m icae prepare-model` again") from None
    tokenizer = load_tokenizer(path, cfg.revision if path == cfg.base_model else None)
    return model, tokenizer
