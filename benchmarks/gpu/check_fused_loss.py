"""The fused LM-head loss (icae.models.linear_ce) on CUDA against the plain path, at
SmolLM2-135M's head (576 -> 49,152) under bf16 autocast: losses, input gradients (with
uneven per-token weights), time of forward + backward and peak memory of each.

Usage: python benchmarks/gpu/check_fused_loss.py [--tokens 32768] [--chunks 2048 8192]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's icae
from icae.models.linear_ce import linear_cross_entropy  # noqa: E402


def plain(h, w, y, chunk):
    from torch.utils.checkpoint import checkpoint

    def part(hc, yc):
        return F.cross_entropy((hc @ w.T).float(), yc, reduction="none")

    return torch.cat([checkpoint(part, h[i:i + chunk], y[i:i + chunk], use_reentrant=False)
                      for i in range(0, h.shape[0], chunk)])


def measure(fn, h, w, y, weights, chunk, reps=5):
    out = None
    for r in range(reps + 1):
        if r == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        hx = h.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(hx, w, y, chunk)
        (loss * weights).sum().backward()
        out = (loss.detach(), hx.grad)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / reps * 1e3
    return out, ms, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--chunks", type=int, nargs="+", default=[2048, 8192])
    args = ap.parse_args()
    torch.manual_seed(0)
    h = torch.randn(args.tokens, 576, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(49152, 576, device="cuda", dtype=torch.bfloat16) * 0.05
    y = torch.randint(0, 49152, (args.tokens,), device="cuda")
    weights = torch.rand(args.tokens, device="cuda") / args.tokens
    for chunk in args.chunks:
        (ref_loss, ref_grad), ref_ms, ref_gib = measure(plain, h, w, y, weights, chunk)
        (loss, grad), ms, gib = measure(linear_cross_entropy, h, w, y, weights, chunk)
        result = {
            "gpu": torch.cuda.get_device_name(), "tokens": args.tokens, "chunk": chunk,
            "plain_ms": round(ref_ms, 2), "fused_ms": round(ms, 2),
            "plain_peak_gib": round(ref_gib, 2), "fused_peak_gib": round(gib, 2),
            "max_loss_diff": float((loss - ref_loss).abs().max()),
            "mean_loss": float(ref_loss.mean()),
            "grad_rel_err": float((grad.float() - ref_grad.float()).norm()
                                  / ref_grad.float().norm()),
            "nonfinite": int((~torch.isfinite(grad)).sum()),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
