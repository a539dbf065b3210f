"""The plain-LLM baseline: the same base model with one LoRA adapter, reading contexts as
text. Same prompt pieces, batch layout, loss and checkpoint format as ICAE."""

from __future__ import annotations

import torch

from icae.config import ModelConfig
from icae.models.base import IGNORE, EncodedPrompt, LoRAWrappedModel
from icae.models.objectives import Objective
from icae.models.templates import Context, Marker, Piece, Text


class PlainLLM(LoRAWrappedModel):
    def __init__(self, base_model, tokenizer, cfg: ModelConfig):
        self.adapter_names = ("llm",)
        super().__init__(base_model, tokenizer, cfg)
        self.decoder_adapter = "llm"

    def encode(self, pieces: list[Piece], task: int = Objective.FT) -> EncodedPrompt:
        ids: list[int] = []
        labels: list[int] = []
        for piece in pieces:
            if isinstance(piece, Marker):
                continue  # learned markers exist only in ICAE
            if isinstance(piece, Context):
                piece = Text(piece.ids)
            ids += piece.ids
            labels += piece.ids if piece.train else [IGNORE] * len(piece.ids)
        return EncodedPrompt(ids, labels, list(range(len(ids))), [], task)

    def prompt_embeds(self, input_ids, **_unused) -> torch.Tensor:
        return self.embed_tokens(input_ids)
