"""The In-Context AutoEncoder (Ge et al., arXiv 2307.06945) on one copy of the base model.

- Encoder: the base model with the LoRA adapter ``encoder`` active. A context is cut into
  segments (see :mod:`icae.models.positions`); each segment is followed by ``mem_size``
  learned memory-slot embeddings, and the encoder's last hidden states at those slots are
  the compressed memory. All segments of a batch go through the encoder together, sorted
  by length and packed into chunks of at most ``model.max_encoder_tokens`` tokens.
- Decoder: the same base model with every adapter disabled (frozen, as in ICAE), or with
  a second adapter ``decoder`` when ``model.train_decoder`` is set.
- Learned embeddings live outside the base vocabulary: with ``V`` the base embedding
  size and ``m`` the memory size, ids ``V..V+m-1`` are the memory slots, ``V+m`` ..
  ``V+m+3`` the [AE], [LM], [FT] and [RECALL] markers, and ``V+m+4`` the placeholder that
  the decoder replaces with compressed memory vectors, in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icae.config import ModelConfig
from icae.models import positions as P
from icae.models.base import IGNORE, EncodedPrompt, LoRAWrappedModel
from icae.models.objectives import Objective
from icae.models.templates import Context, Marker, Piece, Text

MARKER_INDEX = {o.marker: int(o) for o in Objective}


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
        # model.memory_scale "embedding": the norm every memory vector is rescaled to.
        self.memory_norm = (float(emb.norm(dim=1).mean())
                            if cfg.memory_scale == "embedding" else None)
        self.mem_size = m
        self.rate = cfg.mean_compression_rate
        self.layout = cfg.position_layout
        V = self.vocab_size
        self.marker_ids = {k: V + m + i for k, i in MARKER_INDEX.items()}
        self.placeholder_id = V + m + len(MARKER_INDEX)
        self.encoder_bos = _leading_bos(tokenizer)
        self.decoder_adapter = "decoder" if cfg.train_decoder else None  # None: disabled

    def _is_trained(self, name: str) -> bool:
        return "lora_" in name or name == "extra_embeddings"

    # Set by freeze_encoder: the memory-slot rows of extra_embeddings get no gradient.
    memory_rows_frozen = False

    def freeze_encoder(self) -> int:
        """Keep the memory as it is: the encoder adapter stops training and the memory-slot
        embeddings (the first ``mem_size`` rows of ``extra_embeddings``, which share their
        tensor with the markers) get no gradient; the decoder adapter and the markers still
        train. Returns how many parameters stopped training."""
        frozen = self._freeze_adapter(self.adapter_names[0])
        self.memory_rows_frozen = True
        return frozen + self.mem_size * self.extra_embeddings.shape[1]

    def freeze_decoder(self) -> int:
        """Keep the decoder as it is (ICAE's own fine-tuning: only the encoder side learns):
        the decoder adapter (``model.train_decoder``) stops training; the encoder adapter,
        the memory slots and the markers still train. Returns how many parameters stopped
        training (0 without a decoder adapter: the decoder is the frozen base already)."""
        return 0 if self.decoder_adapter is None else self._freeze_adapter(self.decoder_adapter)

    def _freeze_adapter(self, adapter: str) -> int:
        """Stop training the LoRA weights of ``adapter``; how many parameters stopped."""
        frozen, marker = 0, f".{adapter}."
        for name, p in self.named_parameters():
            if "lora_" in name and marker in name and p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen

    # -- prompts ---------------------------------------------------------------------------
    def num_memory_slots(self, length: int) -> int:
        """Slots standing for a context of ``length`` tokens; 0 when it stays text."""
        c = self.cfg
        return P.context_slots(length, self.mem_size, self.rate, c.slot_rule, c.min_compress_len)

    def compresses(self, length: int) -> bool:
        return self.num_memory_slots(length) > 0

    def segments(self, length: int) -> list[tuple[int, int, int]]:
        return P.segments(length, self.mem_size, self.rate, self.cfg.slot_rule)

    def encode(self, pieces: list[Piece], task: int = Objective.FT) -> EncodedPrompt:
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
                    pos += P.epl_memory_positions(L, start, self.mem_size, self.rate,
                                                  self.cfg.slot_rule)
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
        table = self.extra_embeddings
        if self.memory_rows_frozen:
            table = torch.cat([table[:self.mem_size].detach(), table[self.mem_size:]])
        # Base-vocabulary positions look up an all-zero padding row. Clamping them onto row 0
        # instead made the backward of the lookup accumulate tens of thousands of duplicate
        # indices serially: a quarter of the GPU time of a SmolLM2 training step (profile of
        # 2026-12-02); F.embedding skips the padding row's gradient.
        pad_row = len(table)
        padded = torch.cat([table, table.new_zeros((1, table.shape[1]))]).to(emb.dtype)
        extra = F.embedding(torch.where(is_extra, ids - V, pad_row), padded, padding_idx=pad_row)
        return torch.where(is_extra[..., None], extra, emb)

    def encoder_inputs(self, contexts: list[list[int]], starts: list[int] | None = None
                       ) -> dict:
        """CPU tensors for the encoder passes over all segments of ``contexts``.

        Pure host work (the training collator runs it in the data loader, off the GPU's
        critical path). Segments are sorted by length and packed into chunks of at most
        ``model.max_encoder_tokens`` padded tokens, each row ``[BOS? tokens slots pad..]``:
        padding last, so that causal attention alone is exact for every real position (no
        mask: :meth:`causal_attention`). ``slot_index`` holds each chunk's slot positions
        (flat row-major); ``gather`` orders the chunks' slots, concatenated, by context, so
        the device never has to count a boolean mask.
        """
        starts = starts if starts is not None else [1] * len(contexts)
        segs: list[tuple[list[int], int, int, int]] = []  # (tokens, start a, slots k, ctx c)
        for ids, c in zip(contexts, starts):
            for a, n, k in self.segments(len(ids)):
                segs.append((ids[a:a + n], a, k, c))
        if not segs:
            return {"chunks": [], "gather": torch.zeros(0, dtype=torch.long)}
        bos = self.encoder_bos
        b = int(bos is not None)
        head = [bos] if b else []
        order = sorted(range(len(segs)), key=lambda i: -(len(segs[i][0]) + segs[i][2]))
        budget = self.cfg.max_encoder_tokens
        V = self.vocab_size
        chunks, slot_row = [], {}
        flat_offset, i = 0, 0
        while i < len(order):
            width = b + len(segs[order[i]][0]) + segs[order[i]][2]
            chunk = order[i:i + max(1, budget // width)]
            i += len(chunk)
            rows, n, a, k, c, slot_index = [], [], [], [], [], []
            for r, j in enumerate(chunk):
                toks, a_j, k_j, c_j = segs[j]
                rows.append(head + toks + list(range(V, V + k_j))
                            + [self.pad_id] * (width - b - len(toks) - k_j))
                n.append(len(toks)); a.append(a_j); k.append(k_j); c.append(c_j)
                first = r * width + b + len(toks)  # segment j's slots: k_j columns from here
                slot_index.append(torch.arange(first, first + k_j))
                slot_row[j] = torch.arange(flat_offset, flat_offset + k_j)
                flat_offset += k_j
            n_t, k_t = torch.tensor(n), torch.tensor(k)
            col = torch.arange(width)[None, :]
            chunks.append({
                "input_ids": torch.tensor(rows),
                "attention_mask": (col < (b + n_t + k_t)[:, None]).long(),
                "position_ids": P.encoder_positions(self.layout, n_t, k_t, torch.tensor(a),
                                                    torch.tensor(c), width, b == 1),
                "slot_index": torch.cat(slot_index),
            })
        gather = torch.cat([slot_row[j] for j in range(len(segs))])
        return {"chunks": chunks, "gather": gather}

    def run_encoder(self, enc: dict) -> torch.Tensor:
        """Memory vectors (sum of slots, hidden) from :meth:`encoder_inputs` (any device)."""
        hidden_size = self.extra_embeddings.shape[1]
        if not enc["chunks"]:
            return self.extra_embeddings.new_zeros((0, hidden_size))
        device = self.device
        outputs = []
        for ch in enc["chunks"]:
            ch = {key: t.to(device, non_blocking=True) for key, t in ch.items()}
            embeds = self._embed_with_extra(ch["input_ids"])
            with self.adapter("encoder"), self.causal_attention():
                hidden = self.inner(inputs_embeds=embeds, attention_mask=ch["attention_mask"],
                                    position_ids=ch["position_ids"],
                                    use_cache=False).last_hidden_state
            outputs.append(hidden.reshape(-1, hidden_size).index_select(0, ch["slot_index"]))
        memory = torch.cat(outputs).index_select(0, enc["gather"].to(device, non_blocking=True))
        if self.memory_norm is not None:
            norm = memory.float().norm(dim=-1, keepdim=True).clamp(min=1e-6)
            memory = (memory.float() * (self.memory_norm / norm)).to(memory.dtype)
        return memory

    def compress_flat(self, contexts: list[list[int]], starts: list[int] | None = None
                      ) -> torch.Tensor:
        """Memory vectors of all contexts, concatenated in order: (sum of slots, hidden)."""
        return self.run_encoder(self.encoder_inputs(contexts, starts))

    # A MemoryCache (icae.models.memory_cache) for inference: set, each distinct context is
    # encoded once and its memory reused by every prompt that holds it.
    memory_cache = None

    def compress_once(self, contexts: list[list[int]], starts: list[int] | None = None
                      ) -> torch.Tensor:
        """:meth:`compress_flat` (``run_encoder(encoder_inputs(...))``) through
        ``memory_cache`` when one is set (the cache encodes only unseen contexts)."""
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
    def decoder_embeds(self, input_ids: torch.Tensor, memory: torch.Tensor,
                       memory_index: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input embeddings with the memory vectors, in order, at the placeholders.

        ``memory_index`` (from :meth:`collate`): the placeholders' flat positions, counted
        on the host; without it they are counted here, which synchronises with the device
        (and ``masked_scatter``'s backward synchronises again)."""
        embeds = self._embed_with_extra(input_ids)
        memory = memory.to(embeds.dtype)
        if memory_index is not None:
            if len(memory_index) != memory.shape[0]:
                raise ValueError(f"prompt has {len(memory_index)} memory placeholders but "
                                 f"{memory.shape[0]} memory vectors were computed")
            flat = embeds.reshape(-1, embeds.shape[-1])
            return flat.index_copy(0, memory_index.to(flat.device), memory).view_as(embeds)
        is_mem = input_ids == self.placeholder_id
        n_ph = int(is_mem.sum())
        if n_ph != memory.shape[0]:
            raise ValueError(f"prompt has {n_ph} memory placeholders but {memory.shape[0]} "
                             "memory vectors were computed")
        return embeds.masked_scatter(is_mem[..., None], memory)

    def _batch_memory(self, context_ids, context_lengths, context_starts) -> torch.Tensor:
        lengths = context_lengths.tolist()
        rows = context_ids.tolist()
        contexts = [row[:n] for row, n in zip(rows, lengths)]
        return self.compress_once(contexts, context_starts.tolist())

    def prompt_embeds(self, input_ids, context_ids=None, context_lengths=None,
                      context_starts=None, encoder=None, memory_index=None,
                      **_unused) -> torch.Tensor:
        if encoder is not None:  # built by :meth:`collate`, with memory_index
            return self.decoder_embeds(input_ids, self.run_encoder(encoder), memory_index)
        memory = self._batch_memory(context_ids, context_lengths, context_starts)
        return self.decoder_embeds(input_ids, memory)

    def collate(self, examples) -> dict:
        batch = super().collate(examples)
        for key in ("context_ids", "context_lengths", "context_starts"):
            batch.pop(key)
        memory_index = (batch["input_ids"] == self.placeholder_id).reshape(-1).nonzero()
        batch["memory_index"] = memory_index.squeeze(1)
        batch["encoder"] = self.encoder_inputs([list(c) for e in examples for c, _ in e.contexts],
                                               [s for e in examples for _, s in e.contexts])
        n_ph = len(batch["memory_index"])
        if n_ph != len(batch["encoder"]["gather"]):
            raise ValueError(f"batch has {n_ph} memory placeholders but its contexts have "
                             f"{len(batch['encoder']['gather'])} memory slots")
        return batch


def _leading_bos(tokenizer) -> int | None:
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None
