"""Training-step benchmark on a GPU with a randomly initialised model of a real shape.

Speed does not depend on the weights' values, so the model is built from its published
shape (no download) directly on the GPU, with the real tokenizer given by --tokenizer.
Runs `icae benchmark`'s two modes (ours vs seed-style) in one process and prints a table.

    python benchmarks/gpu_benchmark.py --shape qwen3-1.7b --tokenizer PATH \
        --mem-size 256 --rate 4 --context 2048 --batch 4 --steps 5 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's icae

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, head_dim (Qwen3 model cards)
    "tiny": (64, 2, 4, 2, 128, 16),  # CPU smoke test of this script
    "qwen3-0.6b": (1024, 28, 16, 8, 3072, 128),
    "qwen3-1.7b": (2048, 28, 16, 8, 6144, 128),
    "qwen3-4b": (2560, 36, 32, 8, 9728, 128),
    "qwen3-8b": (4096, 36, 32, 8, 12288, 128),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--model-config", default=None, metavar="DIR",
                    help="the architecture from DIR/config.json (e.g. a prepared model's "
                         "directory, weights not needed) instead of --shape")
    ap.add_argument("--mem-size", type=int, default=256)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="pretrain.compile_layers for ours (regional torch.compile)")
    ap.add_argument("--modes", default="ours,seed-style")
    ap.add_argument("--loss-chunk-tokens", type=int, default=None,
                    help="pretrain.loss_chunk_tokens (LM head + loss per chunk of this many labels)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also profile each mode's timed steps: DIR/profile-<mode>.txt, its "
                         "operators by device time, headed by the wall clock")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    import icae.models.loading as loading
    from icae.config import load_config
    from icae.training import benchmark

    hidden, layers, heads, kv, inter, head_dim = SHAPES[args.shape]
    tok = loading.load_tokenizer(args.tokenizer)
    if args.model_config:
        config = AutoConfig.from_pretrained(args.model_config)
    else:
        config = Qwen3Config(vocab_size=151936, hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv,
                             intermediate_size=inter, head_dim=head_dim,
                             max_position_embeddings=40960, tie_word_embeddings=args.shape in
                             ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b"))

    def random_base(cfg_model):
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                                                     attn_implementation="sdpa")
        return model, tok

    loading.load_base_model = random_base  # both modes build from the same shape
    cfg = load_config(None, [
        f"model.mem_size={args.mem_size}", f"model.mean_compression_rate={args.rate}",
        f"model.lora_r={args.lora_r}", "model.lora_alpha=32", "model.dtype=bfloat16",
        f"model.max_encoder_tokens={max(16384, args.batch * args.context)}",
        f"data.pretrain.min_len={args.context}", f"pretrain.bf16=true",
        f"pretrain.per_device_train_batch_size={args.batch}",
        f"pretrain.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"pretrain.compile_layers={str(args.compile).lower()}",
        *([f"pretrain.loss_chunk_tokens={args.loss_chunk_tokens}"] if args.loss_chunk_tokens else []),
        "model.base_model=random", "model.model_dir=/nonexistent"])
    results = []
    for mode in args.modes.split(","):
        try:
            results.append(benchmark._time_mode(
                cfg, mode, args.steps,
                profile_to=f"{args.profile}/profile-{mode}.txt" if args.profile else None))
        except torch.OutOfMemoryError as exc:
            results.append({"mode": mode, "error": f"CUDA out of memory: {str(exc)[:120]}"})
            torch.cuda.empty_cache()
    for r in results:
        r["shape"] = args.model_config or args.shape
        r["gradient_checkpointing"] = args.gradient_checkpointing
    print(json.dumps(results, indent=1))
    ok = [r for r in results if "error" not in r]
    if len(ok) == 2:
        print(f"speed-up ours / seed-style: "
              f"{ok[0]['context_tokens_per_s'] / ok[1]['context_tokens_per_s']:.2f}x; "
              f"peak GPU memory (GiB) {ok[0]['peak_gpu_mem_gib']} vs {ok[1]['peak_gpu_mem_gib']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
