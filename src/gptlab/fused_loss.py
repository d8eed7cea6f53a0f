"""Cross-entropy of a linear output head without materialising the logits.

With GPT-2's 50,257-token vocabulary the logits of a batch are huge (2,048 tokens x 50,257 x
4 bytes = 412 MB), and on a CPU the memory-bound passes over them (log-softmax forward and
backward, zero-filling their gradient) cost as much as the head's matmuls. Here the rows are
processed in chunks: each chunk's logits are turned in place into their own gradient
(softmax minus one-hot), and the gradients of the hidden states and of the head weight are
computed right away. Same matmuls, a fraction of the memory traffic; the result equals
``F.cross_entropy(h @ W.T, targets, ignore_index=-100)`` and its gradients to float rounding.
"""

from __future__ import annotations

import torch


def _chunk_lse(logits: torch.Tensor) -> torch.Tensor:
    """Turn ``logits`` (rows, vocab) into softmax in place; return each row's logsumexp (rows,)."""
    peak = logits.amax(dim=1, keepdim=True)
    logits.sub_(peak).exp_()
    total = logits.sum(dim=1, keepdim=True)
    logits.div_(total)
    return (peak + total.log()).squeeze(1)


class LinearCrossEntropy(torch.autograd.Function):
    """loss = mean over non-ignored rows of CE(hidden @ weight.T, targets); gradients computed in forward.

    Rows whose target is ignored (-100: padding, a masked prompt) get a zero gradient without
    any head matmul, and a frozen head (LoRA, a head tied to a frozen embedding) gets no weight
    gradient, so fine-tuning pays only for the rows and weights it learns from. Columns from
    ``vocab`` on (a padded vocabulary's pad rows) are masked to -inf: no probability, no gradient.
    ``dtype`` (autocast's, e.g. bf16): the matmuls run in it, the log-sum-exp and the sums in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, vocab: int, dtype: torch.dtype | None) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # the casts are explicit below
            loss, grad_hidden, grad_weight = _fused(hidden, weight, targets, chunk, vocab, dtype, ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out, (grad_weight * grad_out if grad_weight is not None else None), None, None, None, None


def _fused(hidden, weight, targets, chunk: int, vocab: int, dtype: torch.dtype | None, want_weight: bool):
    """Loss (scalar), grad of ``hidden`` (its shape and dtype) and of ``weight`` (fp32 under
    ``dtype``, else weight's dtype; None unless ``want_weight``), chunk by chunk."""
    valid = targets != -100
    acc = torch.float32 if dtype else hidden.dtype
    n_valid = valid.sum().clamp(min=1).to(acc)
    grad_weight = torch.zeros_like(weight, dtype=acc) if want_weight else None
    rows_of = None  # all rows take part: the plain path, unchanged numerics
    if hidden.device.type == "cpu" and not bool(valid.all()):  # skip ignored rows' matmuls; off the CPU the mask does it, with no host sync
        rows_of = valid.nonzero().squeeze(1)
        full_grad = torch.zeros_like(hidden)
        hidden, targets = hidden[rows_of], targets[rows_of]
        valid = torch.ones_like(targets, dtype=torch.bool)
    grad_hidden = torch.empty_like(hidden)
    total = hidden.new_zeros((), dtype=acc)
    hc, wc = (hidden.to(dtype), weight.to(dtype)) if dtype else (hidden, weight)
    buf = _logits_buffer(hc, wc, chunk)
    for start in range(0, hidden.size(0), chunk):
        h, t, v = hc[start : start + chunk], targets[start : start + chunk], valid[start : start + chunk]
        logits = _chunk_logits(h, wc, buf, vocab, dtype)
        rows = torch.arange(len(t), device=t.device)
        picked = logits[rows, t.clamp(min=0)]
        lse = _chunk_lse(logits)  # logits now hold the softmax
        total += ((lse - picked) * v).sum()
        logits[rows, t.clamp(min=0)] -= 1.0
        logits.mul_((v.to(logits.dtype) / n_valid)[:, None])
        if dtype is None:
            torch.mm(logits, weight, out=grad_hidden[start : start + chunk])
            if want_weight:
                grad_weight.addmm_(logits.t(), h)
        else:  # low-precision matmuls, fp32 accumulation of the weight's gradient
            g = logits.to(dtype)
            grad_hidden[start : start + chunk] = torch.mm(g, wc)
            if want_weight:
                grad_weight.add_(torch.mm(g.t(), h))
    if rows_of is not None:
        full_grad[rows_of] = grad_hidden
        grad_hidden = full_grad
    return total / n_valid, grad_hidden, grad_weight


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, buf: torch.Tensor | None, vocab: int, dtype: torch.dtype | None) -> torch.Tensor:
    """``h @ w.T`` (rows, padded vocab), fp32 (upcast from ``dtype``'s matmul), columns >= ``vocab`` set to -inf."""
    logits = h @ w.t() if buf is None else torch.mm(h, w.t(), out=buf[: len(h)])
    if dtype is not None:
        logits = logits.float()
    if vocab < logits.size(1):
        logits[:, vocab:] = float("-inf")
    return logits


def _logits_buffer(hidden: torch.Tensor, weight: torch.Tensor, chunk: int) -> torch.Tensor | None:
    """One (chunk, vocab) logits buffer that every chunk reuses (a fresh one per chunk costs a page
    fault per 4 KB: ~7% of a gpt-mini CPU step); None under autocast, whose matmul picks the dtype."""
    if torch.is_autocast_enabled(hidden.device.type) or hidden.dtype != weight.dtype:
        return None
    return hidden.new_empty(min(chunk, hidden.size(0)), weight.size(0))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's dtype on ``device_type`` when it is on, else None."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


@torch.no_grad()
def _loss_only(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, vocab: int, dtype: torch.dtype | None) -> torch.Tensor:
    valid = targets != -100
    total = hidden.new_zeros((), dtype=torch.float32 if dtype else hidden.dtype)
    hc, wc = (hidden.to(dtype), weight.to(dtype)) if dtype else (hidden, weight)
    buf = _logits_buffer(hc, wc, chunk)
    for start in range(0, hidden.size(0), chunk):
        t, v = targets[start : start + chunk], valid[start : start + chunk]
        logits = _chunk_logits(hc[start : start + chunk], wc, buf, vocab, dtype)
        picked = logits[torch.arange(len(t), device=t.device), t.clamp(min=0)]
        total += ((torch.logsumexp(logits, dim=1) - picked) * v).sum()
    return total / valid.sum().clamp(min=1)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 256, vocab: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (-100 ignored).

    ``hidden``: (tokens, d) float, ``weight``: (rows, d), ``targets``: (tokens,) int64 -> scalar (fp32 under autocast).
    ``vocab``: the true vocabulary when ``weight`` has pad rows after it (None: all rows); the pad
    columns never enter the loss. Under autocast the matmuls run in autocast's dtype and the
    log-sum-exp in fp32, ``chunk`` rows at a time: no (tokens, vocab) fp32 tensor is made.
    Without autograd (evaluation) it skips the gradient work.
    """
    vocab = weight.size(0) if vocab is None else vocab
    dtype = _autocast_dtype(hidden.device.type)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, chunk, vocab, dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _loss_only(hidden, weight, targets, chunk, vocab, dtype)
