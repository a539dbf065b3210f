"""Checkpoints that leave the toolkit: standard peft adapter folders, the learned
embeddings in a documented file, the tokenizer, and a merged plain-LLM export.

Beside ``trained.safetensors`` every checkpoint folder holds

``peft/<adapter>/``
    ``adapter_config.json`` + ``adapter_model.safetensors`` with peft's own key names, one
    folder per adapter: ``encoder`` (and ``decoder`` with ``model.train_decoder``) for
    ICAE, ``llm`` for the plain-LLM baseline. ``PeftModel.from_pretrained(base, folder)``
    loads one onto the base model (``base_model_name_or_path`` is ``model.base_model``);
    ICAE's encoder adapter alone does not make a compressor: the memory embeddings below
    are part of it.
``embeddings.safetensors`` (ICAE only)
    ``memory_slots`` (``[mem_size, hidden]``): the learned embeddings appended after the
    context, whose last-layer states become the memory; ``markers`` (``[4, hidden]``):
    the task markers of the decoder prompt, rows in the order ``ae``, ``lm``, ``ft``,
    ``recall`` (autoencoding, language modelling, fine-tuning, recall; checkpoints
    written before recall existed have the first three). In the model they are the
    token ids ``vocab_size ... vocab_size + mem_size - 1`` and the four after them. The
    file's metadata repeats this.
``tokenizer/``
    the tokenizer (with its chat template) the checkpoint was trained with.

:func:`state_from_portable` reads a folder holding only these files back into icae's
parameter names (``load_checkpoint`` uses it when ``trained.safetensors`` is absent).
``python -m icae export-merged --checkpoint DIR --out DIR`` merges a plain-LLM adapter into
full weights (a standard transformers model folder) for serving elsewhere.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from icae.models.objectives import MARKERS

log = logging.getLogger(__name__)

PEFT_DIR = "peft"
EMBEDDINGS = "embeddings.safetensors"
TOKENIZER_DIR = "tokenizer"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def write_portable(model, directory: str | Path) -> None:
    """Write the peft adapter folders, the embeddings file and the tokenizer."""
    from peft import get_peft_model_state_dict

    directory = Path(directory)
    for name in model.adapter_names:
        folder = directory / PEFT_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        # From the parameters, not model.peft.state_dict(): under FSDP2 a state_dict holds
        # the shards (DTensors) even where the trainer gathered the parameters whole.
        state = get_peft_model_state_dict(model.peft, adapter_name=name, state_dict={
            n: p for n, p in model.peft.named_parameters() if "lora_" in n})
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()},
                  str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = copy.deepcopy(model.peft.peft_config[name])
        config.base_model_name_or_path = model.cfg.base_model
        config.revision = model.cfg.revision
        config.inference_mode = True
        config.save_pretrained(str(folder))
    extra = getattr(model, "extra_embeddings", None)
    if extra is not None:
        m = int(model.mem_size)
        emb = extra.detach().to("cpu").float().contiguous()
        V = int(model.vocab_size)
        save_file({"memory_slots": emb[:m].contiguous(), "markers": emb[m:].contiguous()},
                  str(directory / EMBEDDINGS), metadata={
                      "format": "pt",
                      "memory_slots": f"{m} learned memory-slot embeddings, token ids "
                                      f"{V}..{V + m - 1}",
                      "markers": "task markers, rows: " + ", ".join(MARKERS),
                      "marker_token_ids": json.dumps({k: V + m + i
                                                      for i, k in enumerate(MARKERS)}),
                      "position_layout": str(model.cfg.position_layout),
                      "mean_compression_rate": str(model.cfg.mean_compression_rate)})
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_[AB]|lora_embedding_[AB])"
                       r"(?P<rest>\.weight)?$")


def has_portable(directory: str | Path) -> bool:
    return (Path(directory) / PEFT_DIR).is_dir()


def state_from_portable(model, directory: str | Path) -> dict[str, torch.Tensor]:
    """icae's trained-parameter dict from the peft folders and the embeddings file."""
    from icae.models.checkpoint import read_weights

    directory = Path(directory)
    state: dict[str, torch.Tensor] = {}
    for name in model.adapter_names:
        path = directory / PEFT_DIR / name / ADAPTER_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: {PEFT_DIR}/{name}/{ADAPTER_WEIGHTS} is "
                                    f"missing (the model has adapter {name!r})")
        for key, value in read_weights(path).items():
            m = _PEFT_KEY.match(key)
            if not m:
                raise ValueError(f"{path}: unexpected tensor {key!r} (not a LoRA weight)")
            rest = m["rest"] or ""
            state[f"peft.{m['module']}.{m['kind']}.{name}{rest}"] = value
    if getattr(model, "extra_embeddings", None) is not None:
        path = directory / EMBEDDINGS
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: {EMBEDDINGS} (the memory and marker "
                                    "embeddings) is missing")
        emb = read_weights(path)
        state["extra_embeddings"] = torch.cat([emb["memory_slots"], emb["markers"]])
    return state


def export_merged(model, out: str | Path) -> Path:
    """Merge a plain-LLM model's adapter into its base weights; write a transformers model
    folder (config, safetensors, generation config, tokenizer) to ``out`` atomically."""
    from icae.data.io import relax_permissions
    from icae.utils import atomic_directory

    if getattr(model, "compresses_contexts", False):
        raise ValueError("export-merged: an ICAE checkpoint cannot become plain weights (its "
                         "memory slots need the ICAE prompt); use its peft/ adapter folders "
                         "and embeddings.safetensors instead")
    out = Path(out)
    # The adapter flags are icae's own (not peft's set_adapter): enable it for the merge.
    model._apply_adapter_state((False, model.adapter_names[0]))
    merged = model.peft.merge_and_unload(adapter_names=list(model.adapter_names))
    with atomic_directory(out) as tmp:
        merged.save_pretrained(str(tmp))
        model.tokenizer.save_pretrained(str(tmp))
        relax_permissions(tmp)
    return out


def run_export(cfg, args) -> Path:
    """``icae export-merged --checkpoint DIR --out DIR`` (the plain-LLM baseline)."""
    from dataclasses import replace

    from icae.models import build_model
    from icae.models.checkpoint import read_meta

    if not args.checkpoint or not args.out:
        raise ValueError("export-merged needs --checkpoint DIR and --out DIR")
    meta = read_meta(args.checkpoint)
    if meta.get("model_type") != "llm":
        raise ValueError(f"{args.checkpoint}: export-merged merges the plain-LLM baseline's "
                         f"adapter; this is a {meta.get('model_type')!r} checkpoint (use its "
                         f"{PEFT_DIR}/ folders)")
    model = build_model(replace(cfg.model, model_type="llm"), checkpoint=args.checkpoint)
    out = export_merged(model, args.out)
    print(f"merged model written to {out}", flush=True)
    return out
