"""icae.models.linear_ce: the LM head's cross-entropy with gradients made in the forward
pass must equal the plain logits -> cross-entropy path, for any per-token weighting the
caller applies afterwards."""

import pytest
import torch
import torch.nn.functional as F

from icae.models.linear_ce import _softmax_minus_onehot, linear_cross_entropy


def _case(n=13, hidden=8, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g)
    y = torch.randint(0, vocab, (n,), generator=g)
    weights = torch.rand(n, generator=g)  # uneven per-token gradients
    return h, w, y, weights


@pytest.mark.parametrize("chunk", [1, 4, 13, 100])
def test_losses_and_gradients_equal_the_plain_path(chunk):
    h, w, y, weights = _case()
    h1 = h.clone().requires_grad_()
    ref = F.cross_entropy(h1 @ w.T, y, reduction="none")
    (ref * weights).sum().backward()
    h2 = h.clone().requires_grad_()
    got = linear_cross_entropy(h2, w, y, chunk)
    (got * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_matches_the_plain_path_to_bf16_rounding():
    h, w, y, weights = _case(n=32, hidden=16, vocab=300)
    results = []
    for fused in (False, True):
        hx = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss = linear_cross_entropy(hx, w, y, 5)
            else:
                loss = F.cross_entropy((hx @ w.T).float(), y, reduction="none")
        (loss * weights).sum().backward()
        assert hx.grad.dtype == torch.float32  # the input's own dtype comes back
        results.append((loss.detach(), hx.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(results[1][1], results[0][1], atol=2e-2, rtol=2e-2)


def test_without_gradients_only_the_losses_are_computed():
    h, w, y, _ = _case()
    with torch.no_grad():
        got = linear_cross_entropy(h, w, y, 4)
    torch.testing.assert_close(got, F.cross_entropy(h @ w.T, y, reduction="none"))
    assert not got.requires_grad


def test_a_trainable_head_is_refused():
    h, w, y, _ = _case()
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w.requires_grad_(), y, 4)


@pytest.mark.slow
def test_the_compiled_softmax_kernel_equals_eager():
    # On CUDA the kernel runs compiled with dynamic row counts, where it subtracts the
    # one-hot through a comparison instead of the eager scatter (checked here on the CPU
    # backend).
    compiled = torch.compile(_softmax_minus_onehot, dynamic=True)
    for n in (7, 12):
        logits = torch.randn(n, 40).to(torch.bfloat16)
        y = torch.randint(0, 40, (n,))
        ref_loss, ref_grad = _softmax_minus_onehot(logits, y)
        loss, grad = compiled(logits, y)
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(grad, ref_grad)
        assert grad.dtype == torch.bfloat16
        assert (grad.float().sum(-1).abs() < 2e-2).all()  # softmax - onehot sums to zero


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel's CUDA path")
def test_cuda_fused_loss_matches_the_plain_path_under_bf16_autocast():
    # What training runs on a GPU: the compiled softmax kernel, dynamic row counts (a short
    # last chunk), bf16 autocast over the head.
    torch.manual_seed(0)
    h = torch.randn(3000, 64, device="cuda")
    w = torch.randn(1000, 64, device="cuda") * 0.1
    y = torch.randint(0, 1000, (3000,), device="cuda")
    weights = torch.rand(3000, device="cuda")
    results = []
    for fused in (False, True):
        hx = h.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (linear_cross_entropy(hx, w, y, 1024) if fused
                    else F.cross_entropy((hx @ w.T).float(), y, reduction="none"))
        (loss * weights).sum().backward()
        results.append((loss.detach(), hx.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN attention needs a GPU")
def test_cuda_cudnn_causal_attention_without_a_mask_has_finite_gradients():
    # pretrain.cudnn_attention relies on this: pytorch/pytorch#196678's NaN (lengths 64 mod
    # 128, very negative logsumexp) needs a mask; the causal flag alone is clean.
    import math

    from torch.nn.attention import SDPBackend, sdpa_kernel

    L, D = 704, 64
    q = torch.randn(1, 1, L, D, device="cuda", dtype=torch.bfloat16) * 0.1
    k = torch.randn(1, 1, L, D, device="cuda", dtype=torch.bfloat16) * 0.1
    v = torch.randn(1, 1, L, D, device="cuda", dtype=torch.bfloat16)
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(D)
    q.requires_grad_()
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    except RuntimeError as err:  # no cuDNN attention on this card or build
        pytest.skip(str(err).splitlines()[0])
    out.backward(torch.randn_like(out))
    assert torch.isfinite(q.grad).all()
