"""ICAE and the plain-LLM baseline on one shared base model."""

from __future__ import annotations

from icae.config import ModelConfig


def build_model(cfg: ModelConfig, base_model=None, tokenizer=None, checkpoint=None):
    """The configured model (``icae`` or ``llm``) on a loaded or given base model,
    optionally with trained parameters from ``checkpoint``."""
    from icae.models.checkpoint import load_checkpoint
    from icae.models.icae import ICAE
    from icae.models.llm import PlainLLM
    from icae.models.loading import load_base_model

    if base_model is None:
        base_model, tokenizer = load_base_model(cfg)
    cls = ICAE if cfg.model_type == "icae" else PlainLLM
    model = cls(base_model, tokenizer, cfg)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model
