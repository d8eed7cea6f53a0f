"""The random number generators a training run draws from (torch CPU, every CUDA device,
python's ``random``): one capture and one restore, for checkpoints and for undoing a draw.

:func:`capture_rng` splits the states into tensors (``rng.torch``, ``rng.cuda.<i>``: stored in
``state.safetensors``) and JSON (``rng_python``: stored in ``state.json``); a sharded checkpoint,
which keeps no tensor file of its own, writes the tensors as JSON lists (:func:`rng_to_json`).
"""

from __future__ import annotations

import random

import torch


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(tensors, meta)``: the torch CPU state (``rng.torch``, uint8) and each visible
    CUDA device's (``rng.cuda.<i>``), and ``{"rng_python": [version, internal state, gauss]}``."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    return tensors, {"rng_python": [version, list(internal), gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Set the generators to what :func:`capture_rng` returned (entries other than ``rng.*`` are
    ignored; CUDA states only where CUDA is visible, for at most as many devices as there are)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))


def rng_to_json(tensors: dict[str, torch.Tensor]) -> dict:
    """Return :func:`capture_rng`'s tensors as JSON: ``rng_torch`` (a list of bytes) and, with
    CUDA, ``rng_cuda`` (one list per device)."""
    out: dict = {"rng_torch": tensors["rng.torch"].tolist()}
    cuda = [tensors[f"rng.cuda.{i}"].tolist() for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda:
        out["rng_cuda"] = cuda
    return out


def rng_from_json(meta: dict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`rng_to_json`: the tensors :func:`restore_rng` takes."""
    tensors = {"rng.torch": torch.tensor(meta["rng_torch"], dtype=torch.uint8)}
    for i, state in enumerate(meta.get("rng_cuda", [])):
        tensors[f"rng.cuda.{i}"] = torch.tensor(state, dtype=torch.uint8)
    return tensors
