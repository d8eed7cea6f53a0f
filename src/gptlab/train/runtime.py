"""How a training process runs: the torchrun process group, stop signals, FLOPs (its device and
precision: :mod:`gptlab.device`)."""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from gptlab.config import GPTConfig
from gptlab.device import Distributed

# Dense bf16 peak FLOP/s of common accelerators, for model FLOPs utilisation (MFU).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


class StopRequest:
    """While active (a context manager, main thread only), SIGINT and SIGTERM set
    :attr:`signum` instead of stopping the process, so a training loop can finish its step, save
    and stop at a step boundary; a second signal raises KeyboardInterrupt at once (hard stop).
    A signal the process ignores (as `nohup ... &` makes SIGINT) stays ignored. The previous
    handlers are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (`nohup ... &`) stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, ddp: Distributed, device: torch.device) -> bool:
        """True when a stop was asked for (on any rank: every rank then stops at the same step)."""
        flag = self.signum is not None
        if ddp.world > 1:
            t = torch.tensor([int(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def setup_distributed(device_hint: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1); return the layout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_hint in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Distributed(rank, world, local)


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L d T for attention (PaLM appendix B)."""
    return 6 * n_params + 12 * config.n_layers * config.emb_dim * config.context_length


def pad_parameters(config: GPTConfig) -> int:
    """Parameters in the pad rows of a padded vocabulary (embedding, and the head when untied): not counted in MFU."""
    return (config.padded_vocab - config.vocab_size) * config.emb_dim * (1 if config.tie_embeddings else 2)


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of this GPU if known, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
