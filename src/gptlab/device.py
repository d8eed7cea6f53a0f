"""Where a model runs: the process's place in a torchrun group, its device and autocast precision.

Used by inference (generate, serve, score) and training alike; the process group itself, stop
signals and FLOPs are :mod:`gptlab.train.runtime`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptlab.errors import GptlabError


@dataclass
class Distributed:
    """Where this process stands: rank, world size, local rank, and whether it writes outputs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that writes checkpoints, metrics and logs (rank 0)."""
        return self.rank == 0


def pick_device(hint: str, ddp: Distributed) -> torch.device:
    """Return the device: ``auto`` takes CUDA (this rank's GPU) when present, else the CPU."""
    if hint == "auto":
        return torch.device(f"cuda:{ddp.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if hint == "cuda" and ddp.world > 1:
        return torch.device(f"cuda:{ddp.local_rank}")
    if hint.startswith("cuda") and not torch.cuda.is_available():
        raise GptlabError(f"pretrain.device={hint!r} but no CUDA device is visible; use device: auto or cpu")
    return torch.device(hint)


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype (None = fp32). ``auto``: bf16 on CUDA with bf16 support (else
    fp16), fp32 on the CPU: the same params give the same numbers on every CPU, with or without
    native bf16 (ask for ``bf16`` explicitly to use it there). ``fp16`` is CUDA-only (it needs a
    grad scaler)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise GptlabError("pretrain.precision=fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
