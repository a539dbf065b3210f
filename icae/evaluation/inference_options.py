"""Options of ``benchmark-inference`` (kept apart from the benchmark so that building the
command line does not import torch)."""

from __future__ import annotations

# hidden, layers, heads, kv heads, intermediate, head_dim, vocab, tied embeddings, family
SHAPES = {
    "tiny": (64, 2, 4, 2, 128, 16, 512, True, "qwen3"),  # CPU smoke test
    "smollm2-135m": (576, 30, 9, 3, 1536, 64, 49152, True, "llama"),
    "qwen3-0.6b": (1024, 28, 16, 8, 3072, 128, 151936, True, "qwen3"),
    "qwen3-1.7b": (2048, 28, 16, 8, 6144, 128, 151936, True, "qwen3"),
    "qwen3-4b": (2560, 36, 32, 8, 9728, 128, 151936, True, "qwen3"),
    "qwen3-8b": (4096, 36, 32, 8, 12288, 128, 151936, False, "qwen3"),
}

PRESETS = {
    # What the goals need, sized for a few minutes of one H200 at 1.7B.
    "goals": {"scenarios": "qa,throughput,agent", "contexts": "1024,4096,16384",
              "batches": "1,8", "new_tokens": 32, "repeats": 3, "agent_trajectories": 2},
    "quick": {"scenarios": "qa", "contexts": "1024,4096", "batches": "1",
              "new_tokens": 32, "repeats": 2},
}


def add_arguments(p) -> None:
    p.add_argument("--shape", default=None, choices=sorted(SHAPES),
                   help="random weights of this shape (default: the configured base model)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS))
    p.add_argument("--scenarios", default=None, help="comma list of qa,throughput,agent")
    p.add_argument("--contexts", default=None, help="context lengths, e.g. 1024,4096,16384")
    p.add_argument("--batches", default=None, help="batch sizes for qa, e.g. 1,8")
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--question-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--throughput-context", type=int, default=4096)
    p.add_argument("--profile-context", type=int, default=4096,
                   help="qa context length (batch 1) whose decode step is profiled")
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--agent-file", default=None,
                   help="trajectories JSONL(.gz) (default: shared/data/trajectories/test)")
    p.add_argument("--agent-trajectories", type=int, default=None)
    p.add_argument("--agent-max-turns", type=int, default=None)
    p.add_argument("--agent-min-history", type=int, default=16384)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder (default: shared/assets/tokenizers/qwen3 if present, "
                        "else a tiny test tokenizer)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--decoding", default="static", choices=["static", "auto", "dynamic"],
                   help="decoding path of the timed sides (static: also on CPU, eagerly)")
    p.add_argument("--compile-step", action="store_true",
                   help="torch.compile the decode step before capturing it (minutes of "
                        "compiling per batch size and cache size: use with one context "
                        "and one batch size)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; later cases are skipped (and listed) once it is spent")
    p.add_argument("--out", default=None, help="JSON file for the results")
