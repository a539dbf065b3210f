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
