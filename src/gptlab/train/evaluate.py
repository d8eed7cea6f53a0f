"""Evaluation during training: the one loss over a split, when to evaluate, the evaluation row
(losses, lr, tokens/s, MFU, sample; step 0's without throughput), ``best/`` on a new lowest val
loss, and the rising-val warning."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch

from gptlab.errors import GptlabError
from gptlab.io import fault_point
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.train.optim import lr_at
from gptlab.train.run import LoopRun
from gptlab.train.state import LoopState

RISING_EVALS_WARNING = 3  # consecutive evaluations with a higher val loss before a warning


@torch.no_grad()
def split_loss(
    model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]], device: torch.device, autocast=None, empty: str = "no target tokens to score"
) -> float:
    """Mean next-token loss (nats/token) of ``model`` over ``batches``, in order: each
    ``(inputs, targets, weight)`` ((batch, T) int64 each) adds its mean loss times ``weight`` (its
    rows, or its target tokens); a batch of weight 0 is skipped. ``model`` runs in eval mode and
    is put back in its former mode. GptlabError (message ``empty``) when the weights sum to 0."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y, weight in batches:
        if weight == 0:
            continue
        with autocast if autocast is not None else nullcontext():
            _, loss = model(x.to(device), y.to(device))
        total += loss.item() * weight
        count += weight
    model.train(was_training)
    if count == 0:
        raise GptlabError(empty)
    return total / count


def rising_evals(history: list[dict]) -> int:
    """Return how many evaluations in a row, up to the last, had a higher val loss than the one before."""
    n = 0
    while n + 1 < len(history) and history[-1 - n]["val_loss"] > history[-2 - n]["val_loss"]:
        n += 1
    return n


class Evaluator:
    """When a run evaluates (every ``eval_interval`` steps and at the last), what an evaluation
    row holds, and ``best/``: ``save_best(model, step, val_loss)`` is called on a new lowest val loss."""

    def __init__(self, run: LoopRun, p: LoopParams, world: int, autocast, peak: float | None, save_best: Callable[[GPT, int, float], None]):
        self.run, self.p, self.world, self.autocast, self.peak, self.save_best = run, p, world, autocast, peak, save_best

    def due(self, step: int) -> bool:
        """True when step ``step`` (steps done) ends with an evaluation."""
        return step > 0 and (step % self.p.eval_interval == 0 or step == self.p.max_steps)

    def evaluate(self, model: GPT, state: LoopState, tokens_per_s: float | None) -> dict:
        """Evaluate the full ``model`` at ``state.step``; return the history row (metrics, lr,
        tokens/s and MFU on a known GPU unless ``tokens_per_s`` is None, sample). After step 0
        lowers ``state.best_val_loss`` (and saves ``best/``) on a new best; step 0's row (the
        model before any update) is the curves' starting point, never ``best/``."""
        run, step = self.run, state.step
        model.eval()
        with torch.no_grad():
            metrics = run.evaluate(model, self.autocast)
        row = {"step": step, "tokens": state.tokens_seen, **metrics, "lr": lr_at(max(step - 1, 0), self.p)}
        if tokens_per_s is not None:
            row["tokens_per_s"] = round(tokens_per_s, 1)
            if self.peak and run.flops_per_token:
                row["mfu"] = round(run.flops_per_token * tokens_per_s * self.world / self.peak, 4)
        if run.sample:
            row["sample"] = run.sample(model)
        model.train()
        fault_point("eval")
        val = metrics["val_loss"]
        if step > 0 and val < state.best_val_loss:
            state.best_val_loss = val
            self.save_best(model, step, val)
        return row

    def final(self, model: GPT) -> dict:
        """The run's figures on its final weights (``run.final_evaluate``; empty without one)."""
        if not self.run.final_evaluate:
            return {}
        model.eval()
        figures = self.run.final_evaluate(model, self.autocast)
        model.train()
        return figures

    def report(self, state: LoopState) -> list[str]:
        """The lines to print after the last evaluation: its losses, and a warning when val loss
        has risen :data:`RISING_EVALS_WARNING` evaluations in a row."""
        row = state.history[-1]
        extra = f" bpb {row['val_bits_per_byte']:.4f}" if "val_bits_per_byte" in row else ""
        speed = f" {row['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in row else " (before the first step)"
        lines = [f"step {row['step']}: train {row['train_loss']:.4f} val {row['val_loss']:.4f}{extra}{speed}"]
        rising = rising_evals(state.history)
        if rising == RISING_EVALS_WARNING:
            first = state.history[-1 - rising]
            lines.append(
                f"{self.run.name}: warning: val loss rose {rising} evaluations in a row ({first['val_loss']:.4f} at step {first['step']} -> "
                f"{row['val_loss']:.4f} at step {row['step']}): overfitting? best/ keeps the lowest ({state.best_val_loss:.4f})"
            )
        return lines
