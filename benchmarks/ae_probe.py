"""Short autoencoding-only probe runs on the real base model (CPU or GPU).

Why: a full pre-training lease costs GPU time; this loop asks one question cheaply -
does the AE loss of a given (span length, slots, LoRA targets/rank, lr, decoder adapter)
setting fall below the language-modelling level, i.e. does the decoder read the memory?

    python benchmarks/ae_probe.py --span 64 --steps 150 --targets all --rank 64 ...

Prints one line per log interval: step, examples, AE loss (mean over the interval).
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import time

import torch

from icae.config import ModelConfig
from icae.models import build_model

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = ATTN + ["gate_proj", "up_proj", "down_proj"]


def spans(tokenizer, path, span, count, seed, skip_docs=0):
    rng = random.Random(seed)
    out = []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f):
            if i < skip_docs:
                continue
            ids = tokenizer(json.loads(line)["text"])["input_ids"]
            if len(ids) < span:
                continue
            a = rng.randrange(0, len(ids) - span + 1)
            out.append(ids[a:a + span])
            if len(out) >= count:
                break
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="models/base")
    ap.add_argument("--corpus", default="../shared/data/pretrain/corpus.jsonl.gz")
    ap.add_argument("--span", type=int, default=64)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--emb-lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--targets", choices=["attn", "all"], default="attn")
    ap.add_argument("--frozen-decoder", action="store_true")
    ap.add_argument("--layout", default="epl")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mem = int(-(-args.span // args.rate))
    cfg = ModelConfig(model_dir=args.model_dir, mem_size=mem, mean_compression_rate=args.rate,
                      position_layout=args.layout, lora_r=args.rank, lora_alpha=args.alpha,
                      lora_dropout=0.0,
                      lora_target_modules=ATTN if args.targets == "attn" else ALL,
                      train_decoder=not args.frozen_decoder, dtype=args.dtype)
    model = build_model(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    data = spans(model.tokenizer, args.corpus, args.span, args.docs, 0)
    emb = [p for n, p in model.named_parameters() if n == "extra_embeddings"]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and n != "extra_embeddings"]
    opt = torch.optim.AdamW([{"params": lora, "lr": args.lr},
                             {"params": emb, "lr": args.emb_lr}], weight_decay=0.0)
    rng = random.Random(1)
    acc, n, t0 = 0.0, 0, time.time()
    print(json.dumps(vars(args)), flush=True)
    for step in range(1, args.steps + 1):
        batch_spans = rng.sample(data, args.batch)
        enc = [model.encode(model.prompts.autoencoding(s), 0) for s in batch_spans]
        batch = model.collate(enc)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(**batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(lora + emb, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        acc += out["loss"].item()
        n += 1
        if step % args.log_every == 0:
            print(f"step {step} examples {step * args.batch} ae_loss {acc / n:.3f} "
                  f"t {time.time() - t0:.0f}s", flush=True)
            acc, n = 0.0, 0


if __name__ == "__main__":
    main()
