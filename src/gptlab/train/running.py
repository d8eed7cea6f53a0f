"""The running figures of training between two log points: train loss and gradient norm, summed
on the device so that logging them costs one host read per ``log_interval`` steps."""

from __future__ import annotations

import torch


class RunningMeans:
    """Sums of the per-step train loss (nats/token, this process's micro-batches) and gradient norm
    (global, before clipping) since the last :meth:`take`, kept as device tensors: adding a step
    never waits for the accelerator."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new interval: no steps counted."""
        self.loss = torch.zeros((), device=self.device, dtype=torch.float32)
        self.grad_norm = torch.zeros((), device=self.device, dtype=torch.float32)
        self.steps, self.norms = 0, 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """Count one optimizer step: ``loss`` its mean loss (0-dim tensor), ``grad_norm`` its
        gradient norm before clipping (0-dim tensor; None when clipping is off)."""
        self.loss += loss.detach().float()
        self.steps += 1
        if grad_norm is not None:
            if hasattr(grad_norm, "full_tensor"):  # FSDP: clipping returns the norm as a DTensor; every rank takes the whole value
                grad_norm = grad_norm.full_tensor()
            self.grad_norm += grad_norm.detach().float()
            self.norms += 1

    def take(self, world: int = 1) -> dict:
        """Return the interval's means and start a new one (one host sync): ``running_loss``
        (nats/token; with ``world`` > 1 processes, every rank calling, averaged over the ranks:
        the global batch's) and ``grad_norm`` (absent when no step measured one); {} when no
        step was counted."""
        if not self.steps:
            return {}
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(self.loss)
            self.loss /= world
        values = torch.stack([self.loss, self.grad_norm]).tolist()
        row = {"running_loss": round(values[0] / self.steps, 5)}
        if self.norms:
            row["grad_norm"] = round(values[1] / self.norms, 5)
        self.reset()
        return row

    def state(self) -> dict:
        """The sums and counts so far, as JSON (one host read): saved with a checkpoint, so a
        resumed run's next log point covers the same steps as an uninterrupted run's. Under
        several processes the checkpoint holds rank 0's sums, which every rank restores: the
        first log point after such a resume counts rank 0's share of the steps before it for all."""
        loss, grad_norm = torch.stack([self.loss, self.grad_norm]).tolist()
        return {"loss": loss, "grad_norm": grad_norm, "steps": self.steps, "norms": self.norms}

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state` ({}: from nothing)."""
        self.reset()
        if state:
            self.loss.fill_(state["loss"])
            self.grad_norm.fill_(state["grad_norm"])
            self.steps, self.norms = state["steps"], state["norms"]
