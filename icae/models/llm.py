"""The plain-LLM baseline: the same base model with one LoRA adapter, reading contexts as
text. Same prompt pieces, batch layout, loss and checkpoint format as ICAE."""

from __future__ import annotations

import time

import torch

from icae.config import ModelConfig
from icae.models.base import IGNORE, EncodedPrompt, LoRAWrappedModel, collate
from icae.models.templates import Context, Marker, Piece, Text


class PlainLLM(LoRAWrappedModel):
    def __init__(self, base_model, tokenizer, cfg: ModelConfig):
        self.adapter_names = ("llm",)
        super().__init__(base_model, tokenizer, cfg)

    def encode(self, pieces: list[Piece], task: int = 2) -> EncodedPrompt:
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

    def forward(self, input_ids, attention_mask, position_ids, labels=None, task=None,
                num_items_in_batch=None, **_unused):
        embeds = self.embed_tokens(input_ids)
        with self.adapter("llm"):
            hidden = self.inner(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=position_ids, use_cache=False).last_hidden_state
        if labels is None:
            return {"hidden_states": hidden}
        return self.loss_from_hidden(hidden, labels, task, num_items_in_batch)

    @torch.no_grad()
    def generate(self, prompts: list[list[Piece]], max_new_tokens: int = 64,
                 use_cache: bool = True, timings: dict | None = None) -> list[list[int]]:
        encoded = [self.encode(p) for p in prompts]
        batch = {k: v.to(self.device) for k, v in collate(encoded, self.pad_id).items()}
        t0 = time.perf_counter()
        embeds = self.embed_tokens(batch["input_ids"])
        with self.adapter("llm"):
            out = self.greedy_decode(embeds, batch["attention_mask"], batch["position_ids"],
                                     max_new_tokens, use_cache)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if timings is not None:
            timings["compress_s"] = 0.0
            timings["generate_s"] = time.perf_counter() - t0
        return out
