"""SDPA backends for the training passes' attention (causal, no mask), on the GPU machine.

For each backend (flash, cuDNN, memory-efficient) and each shape: forward + backward time
of ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` as transformers calls it
(grouped-query heads through ``enable_gqa``, or the key/value heads repeated first), and
the largest difference of its output and gradients from an fp32 math-backend reference.
Non-finite gradients are counted (pytorch/pytorch#196678: cuDNN's backward with a mask
returns NaN at lengths 64 mod 128; the causal flag without a mask is said to be clean,
which is what ``pretrain.cudnn_attention`` relies on).

Usage: python benchmarks/gpu/sdpa_backends.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# SmolLM2-135M: 9 query heads, 3 key/value heads, head size 64. Lengths: the issue's
# setting (512 +- 10% tokens + 128 slots, so ~590-700) and the recipe (~120 + 32),
# including lengths of 64 mod 128.
SHAPES = [(64, 9, 3, 640, 64), (64, 9, 3, 704, 64), (128, 9, 3, 160, 64),
          (128, 9, 3, 192, 64)]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def attention(q, k, v, gqa: bool):
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1),
                                          v.repeat_interleave(rep, 1), is_causal=True)


def run(backend, q, k, v, dout, gqa: bool, reps: int = 20):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    with sdpa_kernel([backend]):
        out = attention(q, k, v, gqa)
        out.backward(dout)
        grads = [t.grad.clone() for t in (q, k, v)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            for t in (q, k, v):
                t.grad = None
            attention(q, k, v, gqa).backward(dout)
        torch.cuda.synchronize()
    return out.detach(), grads, (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for B, H, KV, S, D in SHAPES:
        q = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, KV, S, D, device="cuda", dtype=torch.bfloat16)
        dout = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
        n = 4  # the fp32 reference on a few rows only (memory)
        qr, kr, vr = (t[:n].float().detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.MATH]):
            ref = attention(qr, kr, vr, gqa=False)
        ref.backward(dout[:n].float())
        ref_grads = [t.grad for t in (qr, kr, vr)]
        for name, backend in BACKENDS.items():
            for gqa in (True, False):
                row = {"shape": [B, H, KV, S, D], "backend": name, "enable_gqa": gqa}
                try:
                    out, grads, ms = run(backend, q, k, v, dout, gqa)
                except RuntimeError as err:  # the backend refuses these inputs
                    row["error"] = str(err).splitlines()[0][:200]
                    rows.append(row)
                    print(row, flush=True)
                    continue
                row["fwd_bwd_ms"] = round(ms, 3)
                row["nonfinite_grads"] = int(sum((~torch.isfinite(g)).sum() for g in grads))
                row["max_err_out"] = float((out[:n].float() - ref).abs().max())
                row["max_err_grads"] = [float((g[:n].float() - r).abs().max())
                                        for g, r in zip(grads, ref_grads)]
                rows.append(row)
                print(row, flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
