"""Cross-entropy through a frozen LM head without keeping the logits.

The LM head of a small model is a large part of its training step: SmolLM2-135M has 576
hidden units and 49,152 classes, so the logits of one micro-batch of 64 x 512 labelled
tokens are 1.6G values. Computed the plain way (bf16 logits, cast to fp32, log-softmax,
NLL, then the same in reverse) they took ~10% of the GPU time of a pre-training step plus
the casts (H100, 2026-12-07), and the logits of each chunk were recomputed in the backward
pass to bound memory.

Each labelled token's loss depends on its own hidden state only, so the gradient of loss
``i`` with respect to ``h_i`` can be computed in the forward pass, chunk by chunk, while
the chunk's logits exist: ``(softmax(h_i W^T) - onehot(y_i)) W``. The backward pass then
only scales those rows by the incoming per-token gradients. Exact (up to rounding) for
any reduction the caller applies afterwards, since the per-token gradients arrive in
backward. The softmax part runs as one compiled kernel on CUDA (fp32 inside, bf16 logits
read twice and the bf16 gradient written once); the weight must not need gradients (the
caller falls back to the plain path when it does). At one micro-batch's 32k labels on
SmolLM2's head: 12.3 ms forward + backward against 50.4 ms for the plain path, 0.82 against
1.35 GiB peak (H100, 2026-12-07, benchmarks/gpu/check_fused_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_compiled = None


def _softmax_minus_onehot(logits: torch.Tensor, targets: torch.Tensor):
    """Per-row cross-entropy and its gradient with respect to the logits (fp32 inside,
    the gradient in the logits' dtype)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    loss = lse - x.gather(1, targets[:, None]).squeeze(1)
    grad = torch.exp(x - lse[:, None])
    if torch.compiler.is_compiling():
        # One pointwise kernel with the comparison inside: no fp32 gradient buffer (an
        # in-place scatter would need one written and read again).
        classes = torch.arange(x.shape[-1], device=x.device)
        grad = torch.where(classes == targets[:, None], grad - 1.0, grad)
    else:
        # Eager (CPU): no row x vocabulary comparison tensor.
        grad.scatter_add_(1, targets[:, None], grad.new_full((grad.shape[0], 1), -1.0))
    return loss, grad.to(logits.dtype)


def _softmax_kernel(device: torch.device):
    global _compiled
    if device.type != "cuda":
        return _softmax_minus_onehot
    if _compiled is None:
        # dynamic: the last chunk of every batch has another row count.
        _compiled = torch.compile(_softmax_minus_onehot, dynamic=True)
    return _compiled


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk_tokens):
        dtype = _compute_dtype(h)
        w = weight.to(dtype)
        need_grad = ctx.needs_input_grad[0]
        losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad_h = torch.empty(h.shape, dtype=dtype, device=h.device) if need_grad else None
        kernel = _softmax_kernel(h.device)
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, h.shape[0], chunk_tokens):
                rows = slice(i, i + chunk_tokens)
                logits = h[rows].to(dtype) @ w.T
                if need_grad:
                    losses[rows], grad_logits = kernel(logits, targets[rows])
                    grad_h[rows] = grad_logits @ w
                else:
                    x = logits.float()
                    losses[rows] = F.cross_entropy(x, targets[rows], reduction="none")
        ctx.h_dtype = h.dtype
        ctx.save_for_backward(grad_h)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad_h,) = ctx.saved_tensors
        if grad_h is None:
            return None, None, None, None
        scaled = grad_h.float() * grad_losses.float()[:, None]
        return scaled.to(ctx.h_dtype), None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int) -> torch.Tensor:
    """Per-row ``cross_entropy(h @ weight.T, targets, reduction="none")`` (fp32), with
    ``weight`` frozen; at most ``chunk_tokens`` rows of logits exist at once."""
    if weight.requires_grad:
        raise ValueError("linear_cross_entropy gives no gradient for the LM head's weight")
    return _LinearCrossEntropy.apply(h, weight, targets, max(1, int(chunk_tokens)))
