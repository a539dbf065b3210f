"""What ICAE and the plain-LLM baseline share: one base model wrapped by peft, prompt
encoding into padded batches, loss on labelled tokens only, and batched greedy decoding."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from icae.config import ModelConfig
from icae.models.objectives import Objective
from icae.models.templates import Piece, PromptBuilder

IGNORE = -100


@dataclass
class EncodedPrompt:
    """One decoder sequence. ``contexts`` are the (token ids, start position) of the
    contexts to compress, in the order their memory placeholders appear."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    contexts: list[tuple[list[int], int]] = field(default_factory=list)
    task: int = Objective.AE  # an Objective (an int: it is batched as a tensor)

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def collate(examples: Sequence[EncodedPrompt], pad_id: int, right: bool = False) -> dict:
    """Pad a batch: on the left for generation (new tokens follow every row's last one),
    on the right (``right``) for training passes (:meth:`LoRAWrappedModel.collate`). The
    position ids are the prompt's own either way, so real tokens compute the same."""
    width = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    ctx_ids, ctx_starts = [], []
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(0, n) if right else slice(width - n, width)
        ids[b, cols] = torch.tensor(e.input_ids)
        labels[b, cols] = torch.tensor(e.labels)
        pos[b, cols] = torch.tensor(e.position_ids)
        mask[b, cols] = 1
        for c_ids, start in e.contexts:
            ctx_ids.append(list(c_ids))
            ctx_starts.append(start)
    clen = max((len(c) for c in ctx_ids), default=0)
    context_ids = torch.full((len(ctx_ids), clen), pad_id, dtype=torch.long)
    for i, c in enumerate(ctx_ids):
        context_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    return {
        "input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels,
        "context_ids": context_ids,
        "context_lengths": torch.tensor([len(c) for c in ctx_ids], dtype=torch.long),
        "context_starts": torch.tensor(ctx_starts, dtype=torch.long),
        "task": torch.tensor([e.task for e in examples], dtype=torch.long),
    }


def add_label_index(batch: dict) -> dict:
    """Host-side ``label_index`` / ``label_task`` for :meth:`loss_from_hidden`."""
    labels = batch["labels"]
    B, T = labels.shape
    label_index = (labels[:, 1:] != IGNORE).reshape(-1).nonzero().squeeze(1)
    batch["label_index"] = label_index
    batch["label_task"] = batch["task"][label_index // max(T - 1, 1)]
    return batch


CAUSAL_SDPA = "icae_causal_sdpa"


def _causal_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def _register_causal_sdpa() -> str:
    """The attention implementation of :meth:`LoRAWrappedModel.causal_attention`: SDPA with
    the causal flag and the mask dropped. transformers builds no mask for an implementation
    its mask registry does not know, so none is made (and no device value is read)."""
    from transformers import AttentionInterface

    if CAUSAL_SDPA not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAUSAL_SDPA, _causal_sdpa)
    return CAUSAL_SDPA


class LoRAWrappedModel(nn.Module):
    """A base causal LM wrapped by peft with one (or two) LoRA adapters."""

    adapter_names: tuple[str, ...] = ()
    # Set by compile_layers: code that must not compile new graphs (decoding inside
    # training) runs eagerly then.
    layers_compiled = False

    def __init__(self, base_model, tokenizer, cfg: ModelConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.cfg = cfg
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer)
        for p in base_model.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), bias="none")
        with warnings.catch_warnings():
            # peft probes the deprecated `is_gradient_checkpointing` property of
            # transformers 5 models; the warning is about peft's code, not ours, and would
            # repeat in every training and evaluation log.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is "
                                    "deprecated", category=FutureWarning)
            self.peft = get_peft_model(base_model, lora, adapter_name=self.adapter_names[0])
        for name in self.adapter_names[1:]:
            self.peft.add_adapter(name, lora)
        self._mark_trainable()
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._tuner_layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        self._adapter_state = (False, self.adapter_names[0])
        self._apply_adapter_state(self._adapter_state)
        self.vocab_size = base_model.get_input_embeddings().num_embeddings
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stop_ids = self.prompts.stop_token_ids()

    # -- parameters -----------------------------------------------------------------------
    def _is_trained(self, name: str) -> bool:
        return "lora_" in name

    def _mark_trainable(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(self._is_trained(name))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if self._is_trained(n)}

    @property
    def base(self):
        return self.peft.get_base_model()

    @property
    def inner(self):
        """The transformer stack without the LM head (hidden states only)."""
        base = self.base
        return getattr(base, base.base_model_prefix)

    @property
    def lm_head(self):
        return self.base.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.get_input_embeddings().weight.dtype

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None,
                                        every_n_layers: int = 1, offload: bool = False):
        """What the Trainer calls (transformers 5 name; ``gradient_checkpointing_enable``
        is its deprecated alias)."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        kwargs["use_reentrant"] = False
        # The encoder and decoder passes run the same layers with different adapter states;
        # recomputation in the backward pass must see the state of its forward pass.
        kwargs["context_fn"] = self._checkpoint_contexts
        if hasattr(self.base, "activation_checkpointing_enable"):
            extra = {} if every_n_layers == 1 and not offload else {
                "every_n_layers": every_n_layers, "offload": offload}
            self.base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                      **extra)
        else:  # transformers releases before the rename
            self.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.base.config.use_cache = False

    def transformer_layers(self) -> list[nn.Module]:
        """The base model's decoder blocks (the classes it names as ``_no_split_modules``)."""
        names = set(getattr(self.base, "_no_split_modules", None) or [])
        layers = [m for m in self.base.modules() if type(m).__name__ in names]
        if not layers:
            raise ValueError(f"cannot tell the decoder layers of {type(self.base).__name__} "
                             "(it names no _no_split_modules)")
        return layers

    def compile_layers(self, **compile_kwargs) -> int:
        """``torch.compile`` every decoder block in place; returns how many.

        Regional compilation: dynamo inlines nn.Module attributes (its default since torch
        2.5), so the blocks share one graph per adapter state instead of compiling thirty
        copies, and the whole-model code around them (mask building, the memory scatter,
        the chunked loss), which changes shape from batch to batch, stays eager."""
        layers = self.transformer_layers()
        for layer in layers:
            layer.compile(**compile_kwargs)
        self.layers_compiled = True
        return len(layers)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def _checkpoint_contexts(self):
        state = self._adapter_state
        return nullcontext(), self._adapter_state_context(state)

    def _apply_adapter_state(self, state: tuple[bool, str]) -> None:
        # Set the LoRA layers' flags directly: peft's set_adapter / disable_adapter also
        # flip requires_grad, which would freeze whichever adapter is not active.
        disabled, name = state
        for layer in self._tuner_layers:
            layer._disable_adapters = disabled
            layer._active_adapter = name
        self._adapter_state = state

    @contextmanager
    def _adapter_state_context(self, state: tuple[bool, str]) -> Iterator[None]:
        previous = self._adapter_state
        self._apply_adapter_state(state)
        try:
            yield
        finally:
            self._apply_adapter_state(previous)

    def adapter(self, name: str | None):
        """Run with adapter ``name`` active, or with every adapter disabled (``None``)."""
        if name is None:
            return self._adapter_state_context((True, self._adapter_state[1]))
        return self._adapter_state_context((False, name))

    # Labelled tokens per chunk of the LM head + cross-entropy: logits over the vocabulary
    # never exist for more than this many tokens at once (150k-token vocabularies make them
    # the largest activation of a long autoencoding target). A frozen plain LM head takes
    # icae.models.linear_ce (gradients made in the forward pass, nothing recomputed);
    # otherwise each chunk is recomputed in the backward pass.
    loss_chunk_tokens: int = 2048

    def _ce_chunk(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.lm_head(h).float(), y, reduction="none")

    def _fused_loss_applies(self) -> bool:
        """The LM head is a plain frozen linear map (not a LoRA-wrapped or biased one), so
        :func:`~icae.models.linear_ce.linear_cross_entropy` can take the loss."""
        head = self.lm_head
        return (type(head) is nn.Linear and head.bias is None
                and not head.weight.requires_grad)

    def _token_losses(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        n = self.loss_chunk_tokens
        if self._fused_loss_applies():
            from icae.models.linear_ce import linear_cross_entropy

            return linear_cross_entropy(h, self.lm_head.weight, y, n)
        if h.shape[0] <= n:
            return self._ce_chunk(h, y)
        parts = []
        for i in range(0, h.shape[0], n):
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._ce_chunk, h[i:i + n], y[i:i + n],
                                        use_reentrant=False))
            else:
                parts.append(self._ce_chunk(h[i:i + n], y[i:i + n]))
        return torch.cat(parts)

    @contextmanager
    def causal_attention(self, enabled: bool = True) -> Iterator[None]:
        """Inside (when ``enabled``), SDPA runs with its causal flag and no mask at all.

        Exact for every real position of right-padded rows (padding last: causal attention
        keeps each real token from seeing it), which is how the training batches and the
        encoder's chunks are laid out. Without a mask, SDPA can take its flash kernel;
        with the padding mask of left-padded rows it fell back to a generic kernel that
        took half the GPU time of a SmolLM2 training step (H100, 2026-12-07), and
        transformers reads the device on every pass to ask whether anything is padded.
        Only SDPA is switched; other attention implementations keep the mask."""
        config = self.base.config
        previous = getattr(config, "_attn_implementation", None)
        if not enabled or previous != "sdpa":
            yield
            return
        config._attn_implementation = _register_causal_sdpa()
        try:
            yield
        finally:
            config._attn_implementation = previous

    # -- embeddings and loss ----------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.base.get_input_embeddings()
        return emb(input_ids.clamp(max=self.vocab_size - 1))

    def loss_from_hidden(self, hidden: torch.Tensor, labels: torch.Tensor,
                         task: torch.Tensor | None = None,
                         num_items_in_batch: int | torch.Tensor | None = None,
                         label_index: torch.Tensor | None = None,
                         label_task: torch.Tensor | None = None) -> dict:
        """Cross-entropy of next-token prediction on labelled tokens; the LM head runs only
        at those positions (vocabularies of 150k make full logits the main memory cost).

        ``label_index`` / ``label_task`` (from :meth:`collate`): the flat positions whose
        next token is labelled and their objective, computed on the host so that the step
        needs no device-to-host synchronisation. The per-objective sums and counts are
        returned as tensors (``<objective>_loss_sum`` / ``<objective>_tokens``)."""
        B, T, H = hidden.shape
        targets = labels[:, 1:].reshape(-1)
        if label_index is None:
            sel = (labels[:, 1:] != IGNORE).reshape(-1)
            label_index = sel.nonzero().squeeze(1)
            if task is not None:
                row = label_index // (T - 1)
                label_task = task.to(labels.device)[row]
        # Position p of the shifted (B, T-1) layout is hidden row p // (T-1), column p % (T-1).
        flat_h = hidden[:, :-1].reshape(-1, H)
        per_token = self._token_losses(flat_h.index_select(0, label_index),
                                       targets.index_select(0, label_index))
        # new_full / index_add_ rather than torch.tensor(..., device=) and bincount: both
        # of those wait for the device (a host copy; bincount reads the largest id).
        count = per_token.new_full((), per_token.shape[0], dtype=torch.long)
        denom = num_items_in_batch if num_items_in_batch is not None else max(
            per_token.shape[0], 1)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(per_token.device)
        out = {"loss": per_token.sum() / denom, "num_tokens": count}
        if label_task is not None:
            sums = torch.zeros(len(Objective), device=per_token.device, dtype=torch.float32)
            sums.index_add_(0, label_task, per_token.detach().float())
            counts = torch.zeros(len(Objective), dtype=torch.long, device=per_token.device)
            counts.index_add_(0, label_task, torch.ones_like(label_task))
            for obj in Objective:
                out[obj.loss_sum_key] = sums[obj]
                out[obj.tokens_key] = counts[obj]
                out[obj.loss_key] = sums[obj] / counts[obj].clamp(min=1)
        return out

    def _cache_kwarg(self) -> str:
        import inspect

        params = inspect.signature(type(self.inner).forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    # -- forward and generation (subclasses provide prompt_embeds and decoder_adapter) -------
    decoder_adapter: str | None = None
    compresses_contexts: bool = False

    def prompt_embeds(self, input_ids, **batch) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, examples: Sequence[EncodedPrompt]) -> dict:
        """The training (and scoring) batch: :func:`collate`, right-padded, so that
        :meth:`forward` runs with :meth:`causal_attention`, plus host-side label indices."""
        batch = add_label_index(collate(examples, self.pad_id, right=True))
        batch["right_padded"] = True
        return batch

    def forward(self, input_ids, attention_mask, position_ids, labels=None, task=None,
                num_items_in_batch=None, label_index=None, label_task=None,
                right_padded=False, **batch):
        embeds = self.prompt_embeds(input_ids, **batch)
        with self.adapter(self.decoder_adapter), self.causal_attention(right_padded):
            hidden = self.inner(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=position_ids, use_cache=False).last_hidden_state
        if labels is None:
            return {"hidden_states": hidden}
        return self.loss_from_hidden(hidden, labels, task, num_items_in_batch,
                                     label_index, label_task)

    # Decoding path of generate (see icae.models.decoding): "auto" takes the static
    # pre-allocated cache with CUDA-graph decode steps on CUDA, the dynamic cache elsewhere.
    decoding: str = "auto"
    # Static path only: torch.compile the decode step before capturing it (slow to compile).
    decode_compile: bool = False

    @torch.no_grad()
    def generate(self, prompts: list[list[Piece]], max_new_tokens: int = 64,
                 use_cache: bool = True, timings: dict | None = None,
                 decoding: str | None = None, stop: bool = True) -> list[list[int]]:
        """Greedy answers to prompt pieces. ``timings`` receives ``compress_s`` (building
        the prompt embeddings: the encoder pass for ICAE), ``generate_s`` and its parts
        ``prefill_s`` and ``decode_s``. ``stop=False`` decodes the full budget whatever the
        tokens (benchmarks on random weights)."""
        encoded = [self.encode(p) for p in prompts]
        batch = {k: v.to(self.device) for k, v in collate(encoded, self.pad_id).items()}
        t0 = time.perf_counter()
        embeds = self.prompt_embeds(**batch)
        _sync(self.device)
        t1 = time.perf_counter()
        parts: dict = {}
        with self.adapter(self.decoder_adapter):
            out = self.greedy_decode(embeds, batch["attention_mask"], batch["position_ids"],
                                     max_new_tokens, use_cache, decoding=decoding, stop=stop,
                                     timings=parts)
        _sync(self.device)
        if timings is not None:
            # Without an encoder there is nothing to compress: embedding the prompt is part
            # of generation.
            split = t1 if self.compresses_contexts else t0
            timings["compress_s"] = split - t0
            timings["generate_s"] = time.perf_counter() - split
            if parts:
                timings["prefill_s"] = parts["prefill_s"] + (t1 - split)
                timings["decode_s"] = parts["decode_s"]
        return out

    def decoding_mode(self, decoding: str | None, capacity: int, device: torch.device) -> str:
        """``static`` or ``dynamic`` for a decode of ``capacity`` positions; ``auto`` falls
        back to dynamic where the static path cannot run, an explicit ``static`` fails."""
        from icae.models import decoding as D

        asked = decoding or self.decoding
        mode = D.resolve_mode(asked, device)
        if mode == "static":
            reason = D.static_unsupported_reason(self, capacity)
            if reason:
                if asked == "static":
                    raise ValueError(f"decoding=static is not possible here: {reason}")
                mode = "dynamic"
        return mode

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_decode(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, max_new_tokens: int,
                      use_cache: bool = True, decoding: str | None = None,
                      stop: bool = True, timings: dict | None = None) -> list[list[int]]:
        """Greedy decoding from left-padded prompt embeddings; each row stops at its first
        stop token (EOS or the template's end-of-turn), which is not returned. With
        ``use_cache`` the static path (:mod:`icae.models.decoding`) or the dynamic cache
        below, per :meth:`decoding_mode`; both give the same tokens."""
        if use_cache and self.decoding_mode(
                decoding, attention_mask.shape[1] + max_new_tokens, embeds.device) == "static":
            from icae.models.decoding import static_greedy_decode

            return static_greedy_decode(self, embeds, attention_mask, position_ids,
                                        max_new_tokens, stop=stop, timings=timings)
        t_start = time.perf_counter()
        B = embeds.shape[0]
        stop_t = torch.tensor((self.stop_ids if stop else None) or [-1], device=embeds.device)
        done = torch.zeros(B, dtype=torch.bool, device=embeds.device)
        generated: list[torch.Tensor] = []
        next_pos = position_ids[:, -1] + 1
        mask = attention_mask
        cache_kw = {}
        if use_cache:
            from transformers import DynamicCache

            # The kwarg was renamed from past_key_values to cache during transformers 5.x.
            cache_kw = {self._cache_kwarg(): DynamicCache(config=self.base.config)}
        seq_embeds, seq_pos = embeds, position_ids
        out = self.inner(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                         use_cache=use_cache, **cache_kw)
        if timings is not None:
            _sync(embeds.device)
        t_prefill = time.perf_counter()
        for _ in range(max_new_tokens):
            logits = self.lm_head(out.last_hidden_state[:, -1]).float()
            token = logits.argmax(-1)
            token = torch.where(done, torch.full_like(token, self.pad_id), token)
            generated.append(token)
            done = done | torch.isin(token, stop_t)
            if bool(done.all()):
                break
            new_embed = self.embed_tokens(token[:, None]).to(embeds.dtype)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if use_cache:
                out = self.inner(inputs_embeds=new_embed, attention_mask=mask,
                                 position_ids=next_pos[:, None], use_cache=True, **cache_kw)
            else:
                seq_embeds = torch.cat([seq_embeds, new_embed], dim=1)
                seq_pos = torch.cat([seq_pos, next_pos[:, None]], dim=1)
                out = self.inner(inputs_embeds=seq_embeds, attention_mask=mask,
                                 position_ids=seq_pos, use_cache=False)
            next_pos = next_pos + 1
        if timings is not None:
            _sync(embeds.device)
            timings["prefill_s"] = t_prefill - t_start
            timings["decode_s"] = time.perf_counter() - t_prefill
        if not generated:
            return [[] for _ in range(B)]
        tokens = torch.stack(generated, dim=1).tolist()
        stops = set(self.stop_ids) if stop else set()
        result = []
        for row in tokens:
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:cut])
        return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
