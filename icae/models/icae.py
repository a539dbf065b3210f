"""The In-Context AutoEncoder (Ge et al., arXiv 2307.06945) on one copy of the base model.

- Encoder: the base model with the LoRA adapter ``encoder`` active. A context is cut into
  segments (see :mod:`icae.models.positions`); each segment is followed by ``mem_size``
  learned memory-slot embeddings, and the encoder's last hidden states at those slots are
  the compressed memory. All segments of a batch go through the encoder together, sorted
  by length and packed into chunks of at most ``model.max_encoder_tokens`` tokens.
- Decoder: the same base model with every adapter disabled (frozen, as in ICAE), or with
  a second adapter ``decoder`` when ``model.train_decoder`` is set.
- Learned embeddings live outside the base vocabulary: with ``V`` the base embedding
  size and ``m`` the memory size, ids ``V..V+m-1`` are the memory slots, ``V+m``,
  ``V+m+1``, ``V+m+2`` the [AE], [LM] and [FT] markers, and ``V+m+3`` the placeholder that
  the decoder replaces with compressed memory vectors, in order.
"""

from __future__ import annotations

import torch
from torch import nn

from icae.config import ModelConfig
from icae.models import positions as P
from icae.models.base import IGNORE, EncodedPrompt, LoRAWrappedModel
from icae.models.templates import Context, Marker, Piece, Text

MARKER_INDEX = {"ae": 0, "lm": 1, "ft": 2}


class ICAE(LoRAWrappedModel):
    compresses_contexts = True

    def __init__(self, base_model, tokenizer, cfg: ModelConfig):
        self.adapter_names = ("encoder", "decoder") if cfg.train_decoder else ("encoder",)
        super().__init__(base_model, tokenizer, cfg)
        m = cfg.mem_size
        emb = base_model.get_input_embeddings().weight.detach().float()
        hidden = emb.shape[1]
        # Start the learned slots at the scale of real token embeddings.
        init = torch.randn(m + len(MARKER_INDEX), hidden, device=emb.device)
        init = init * emb.std() + emb.mean()
        self.extra_embeddings = nn.Parameter(init)
        self.mem_size = m
        self.rate = cfg.mean_compression_rate
        self.layout = cfg.position_layout
        V = self.vocab_size
        self.memory_token_ids = torch.arange(V, V + m)
        self.marker_ids = {k: V + m + i for k, i in MARKER_INDEX.items()}
        self.placeholder_id = V + m + len(MARKER_INDEX)
        self.encoder_bos = _leading_bos(tokenizer)
        self.decoder_adapter = "decoder" if cfg.train_decoder else None  # None: disabled

    def _is_trained(self, name: str) -> bool:
        return "lora_" in name or name == "extra_embeddings"

    # -- prompts ---------------------------------------------------------------------------
    def compresses(self, length: int) -> bool:
        return length > 0 and length >= self.cfg.min_compress_len

    def num_memory_slots(self, length: int) -> int:
        return P.num_segments(length, self.mem_size, self.rate) * self.mem_size

    def encode(self, pieces: list[Piece], task: int = 2) -> EncodedPrompt:
        """Turn prompt pieces into decoder ids (with memory placeholders), labels and
        position ids for the configured layout (formulas in :mod:`icae.models.positions`)."""
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        contexts: list[tuple[list[int], int]] = []
        cur = 0
        epl = self.layout == "epl"
        for piece in pieces:
            if isinstance(piece, Context) and not self.compresses(len(piece.ids)):
                piece = Text(piece.ids)
            if isinstance(piece, Text):
                n = len(piece.ids)
                ids += piece.ids
                labels += piece.ids if piece.train else [IGNORE] * n
                pos += range(cur, cur + n)
                cur += n
            elif isinstance(piece, Marker):
                ids.append(self.marker_ids[piece.kind])
                labels.append(IGNORE)
                if epl and piece.kind == "ae":
                    pos.append(0)
                    cur = 1
                else:
                    pos.append(cur)
                    cur += 1
            elif isinstance(piece, Context):
                L = len(piece.ids)
                slots = self.num_memory_slots(L)
                start = max(cur, 1)
                ids += [self.placeholder_id] * slots
                labels += [IGNORE] * slots
                if epl:
                    pos += P.epl_memory_positions(L, start, self.mem_size, self.rate)
                    cur = start + L
                else:
                    pos += range(cur, cur + slots)
                    cur += slots
                contexts.append((list(piece.ids), start))
            else:
                raise TypeError(f"unknown prompt piece {piece!r}")
        return EncodedPrompt(ids, labels, pos, contexts, task)

    # -- encoder -----------------------------------------------------------------------------
    def _embed_with_extra(self, ids: torch.Tensor) -> torch.Tensor:
        V = self.vocab_size
        emb = self.embed_tokens(ids)
        is_extra = (ids >= V) & (ids < self.placeholder_id)
        extra = self.extra_embeddings.to(emb.dtype)[(ids - V).clamp(0, len(self.extra_embeddings) - 1)]
        return torch.where(is_extra[..., None], extra, emb)

    def compress_flat(self, contexts: list[list[int]], starts: list[int] | None = None
                      ) -> torch.Tensor:
        """Memory vectors of all contexts, concatenated in order: (sum of slots, hidden)."""
        starts = starts if starts is not None else [1] * len(contexts)
        m = self.mem_size
        segs: list[tuple[list[int], int, int]] = []  # (tokens, segment start a, ctx start c)
        for ids, c in zip(contexts, starts):
            for a, n in P.segment_bounds(len(ids), m, self.rate):
                segs.append((ids[a:a + n], a, c))
        hidden_size = self.extra_embeddings.shape[1]
        if not segs:
            return self.extra_embeddings.new_zeros((0, hidden_size))
        bos = self.encoder_bos
        b = int(bos is not None)
        order = sorted(range(len(segs)), key=lambda i: -len(segs[i][0]))
        budget = self.cfg.max_encoder_tokens
        outputs, done_order = [], []
        device = self.device
        mem_ids = self.memory_token_ids.tolist()
        i = 0
        while i < len(order):
            width = b + len(segs[order[i]][0]) + m
            chunk = order[i:i + max(1, budget // width)]
            i += len(chunk)
            rows = []
            for j in chunk:
                toks = segs[j][0]
                rows.append([self.pad_id] * (width - b - len(toks) - m)
                            + ([bos] if b else []) + toks + mem_ids)
            ids = torch.tensor(rows, device=device)
            n = torch.tensor([len(segs[j][0]) for j in chunk], device=device)
            mask = (torch.arange(width, device=device)[None, :]
                    >= (width - b - n - m)[:, None]).long()
            pos = P.encoder_positions(
                self.layout, n, torch.tensor([segs[j][1] for j in chunk], device=device),
                torch.tensor([segs[j][2] for j in chunk], device=device), width, m, b == 1)
            embeds = self._embed_with_extra(ids)
            with self.adapter("encoder"):
                hidden = self.inner(inputs_embeds=embeds, attention_mask=mask,
                                    position_ids=pos, use_cache=False).last_hidden_state
            outputs.append(hidden[:, -m:])
            done_order += chunk
        stacked = torch.cat(outputs, dim=0)
        inverse = torch.empty(len(done_order), dtype=torch.long, device=stacked.device)
        inverse[torch.tensor(done_order, device=stacked.device)] = torch.arange(
            len(done_order), device=stacked.device)
        return stacked[inverse].reshape(-1, hidden_size)

    # A MemoryCache (icae.models.memory_cache) for inference: set, each distinct context is
    # encoded once and its memory reused by every prompt that holds it.
    memory_cache = None

    def compress_once(self, contexts: list[list[int]], starts: list[int] | None = None
                      ) -> torch.Tensor:
        """:meth:`compress_flat` through ``memory_cache`` when one is set."""
        if self.memory_cache is None:
            return self.compress_flat(contexts, starts)
        return self.memory_cache.compress(self, contexts, starts)

    def compress(self, contexts: list[list[int]], starts: list[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (contexts, max slots, hidden) and its mask (contexts, max slots)."""
        flat = self.compress_flat(contexts, starts)
        slots = [self.num_memory_slots(len(c)) for c in contexts]
        S = max(slots, default=0)
        mem = flat.new_zeros((len(contexts), S, flat.shape[-1]))
        mask = torch.zeros((len(contexts), S), dtype=torch.bool, device=flat.device)
        for k, s in enumerate(slots):
            mask[k, :s] = True
        mem[mask] = flat
        return mem, mask

    # -- decoder -----------------------------------------------------------------------------
    def decoder_embeds(self, input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        embeds = self._embed_with_extra(input_ids)
        is_mem = input_ids == self.placeholder_id
        n_ph = int(is_mem.sum())
        if n_ph != memory.shape[0]:
            raise ValueError(f"prompt has {n_ph} memory placeholders but {memory.shape[0]} "
                             "memory vectors were computed")
        return embeds.masked_scatter(is_mem[..., None], memory.to(embeds.dtype))

    def _batch_memory(self, context_ids, context_lengths, context_starts) -> torch.Tensor:
        lengths = context_lengths.tolist()
        rows = context_ids.tolist()
        contexts = [row[:n] for row, n in zip(rows, lengths)]
        return self.compress_once(contexts, context_starts.tolist())

    def prompt_embeds(self, input_ids, context_ids=None, context_lengths=None,
                      context_starts=None, **_unused) -> torch.Tensor:
        memory = self._batch_memory(context_ids, context_lengths, context_starts)
        return self.decoder_embeds(input_ids, memory)


def _leading_bos(tokenizer) -> int | None:
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None
