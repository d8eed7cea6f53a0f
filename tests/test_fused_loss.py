import pytest
import torch
import torch.nn.functional as F

from gptlab.config import GPTConfig
from gptlab.fused_loss import linear_cross_entropy
from gptlab.model import GPT


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_matches_cross_entropy_and_its_gradients(chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    t = torch.randint(0, 300, (50,))
    t[::7] = -100
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    gh, gw = torch.autograd.grad(ref, (h, w))
    loss = linear_cross_entropy(h, w, t, chunk)
    fh, fw = torch.autograd.grad(loss, (h, w))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(fh, gh, atol=1e-6) and torch.allclose(fw, gw, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t, chunk), ref, atol=1e-6)


def test_all_ignored_gives_zero_loss_and_gradients():
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0 and h.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


@pytest.mark.parametrize("tie", [True, False])
def test_model_gradients_equal_the_plain_path(tie):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=211, context_length=16, emb_dim=32, n_heads=4, n_layers=2, tie_embeddings=tie))
    idx, targets = torch.randint(0, 211, (3, 16)), torch.randint(0, 211, (3, 16))
    targets[0, :5] = -100
    logits, fused = model(idx, targets)
    assert logits is None
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    logits, plain = model(idx, targets, return_logits=True)
    assert logits.shape == (3, 16, 211)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    assert torch.allclose(fused, plain, atol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_ignored_rows_and_a_frozen_head_cost_nothing_and_change_nothing():
    import torch.nn.functional as F

    from gptlab.fused_loss import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16)  # frozen: no gradient wanted
    targets = torch.randint(0, 50, (37,))
    targets[:20] = -100  # a masked prompt
    targets[30:] = -100  # padding
    loss = linear_cross_entropy(hidden, weight, targets, chunk=8)
    loss.backward()
    ref_hidden = hidden.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_hidden @ weight.t(), targets, ignore_index=-100)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(hidden.grad, ref_hidden.grad, atol=1e-6)
    assert torch.all(hidden.grad[:20] == 0) and torch.all(hidden.grad[30:] == 0)
    assert weight.grad is None
