"""What one training run is: its batch source, its evaluation hooks, its resume key (run id) and its result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.train.runtime import Distributed


class BatchSource(Protocol):
    """Where a training loop's batches come from; its position is part of a resumable checkpoint."""

    def step_batches(self, accum: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's ``accum`` micro-batches ``(inputs, targets)``, (batch, seq) int64 each,
        of the next optimizer step (every rank draws the same global batch and takes its share)."""
        ...

    def state(self) -> Any:
        """Return the JSON-able position of the source (RNG state, epoch...)."""
        ...

    def restore(self, state: Any) -> None:
        """Continue from a position returned by :meth:`state`."""
        ...


@dataclass
class LoopRun:
    """One training run for :func:`gptlab.train.loop.train_loop`: the data, the evaluation and where checkpoints go.

    ``evaluate(model, autocast)`` returns the evaluation metrics (must include ``val_loss``,
    nats/token); ``sample(model)`` an optional text sample. ``extra`` is merged into the saved
    ``config.json`` (under ``name``); ``summary`` is merged into the run summary (and DVCLive metrics);
    ``final_evaluate(model, autocast)``, run once on the final weights, adds its figures to it.
    ``initial_val_name``: the summary key that holds the val loss of step 0 (the model before any
    update; fine-tuning: ``base_val_loss``), with ``val_loss_gain`` (that minus the last val loss) beside it.
    """

    name: str
    run_id: str
    run_dir: Path
    tokenizer_spec: str
    source: BatchSource
    evaluate: Callable[[GPT, Any], dict]
    accum: int = 1
    sample: Callable[[GPT], str] | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    flops_per_token: float | None = None
    summary: dict = dataclasses.field(default_factory=dict)
    final_evaluate: Callable[[GPT, Any], dict] | None = None
    initial_val_name: str | None = None


@dataclass
class TrainResult:
    """What a training run ends with: summary figures, where the checkpoints are, and the
    process layout it ran on (``ddp.main``: this process writes the outputs)."""

    summary: dict
    latest: Path
    best: Path | None
    ddp: Distributed = dataclasses.field(default_factory=Distributed)


# Params that change where or how a run is carried out, not the numbers it produces.
NOT_TRAJECTORY = ("checkpoint_dir", "resume", "device", "sample_prompt", "sample_tokens", "keep_runs", "parallel", "activation_checkpointing", "log_interval")


def json_sha256(value: Any) -> str:
    """Return the sha256 (64 hex digits) of ``value`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def run_id(kind: str, p: LoopParams, **parts: Any) -> str:
    """The resume key of a run (12 hex digits): a hash of the params under ``kind`` (those in
    :data:`NOT_TRAJECTORY` left out) and ``parts`` (model, base, seed, data...), as canonical JSON.
    The same inputs give the same id, so a run with an id already in the checkpoint folder resumes it."""
    keep = {k: v for k, v in dataclasses.asdict(p).items() if k not in NOT_TRAJECTORY}
    return json_sha256({kind: keep, **parts})[:12]


def code_sha256(module: str) -> str:
    """Return the sha256 (64 hex digits) of the source of gptlab ``module`` (dotted name) and of
    every gptlab file it may import (:func:`gptlab.pipeline.imported_files`: the same files DVC
    lists as the stage's code deps), each file's path relative to the package root hashed with it.

    Part of a run id, so a checkpoint written by other code is not resumed: a completed run of an
    older loop (say one that logged no step-0 evaluation) would otherwise be taken as current."""
    import gptlab
    from gptlab.pipeline import imported_files, module_file

    src = Path(gptlab.__file__).resolve().parent.parent
    entry = module_file(module, src)
    if entry is None:
        raise GptlabError(f"code_sha256: no module {module!r} under {src}")
    digest = hashlib.sha256()
    for path in sorted(imported_files(entry, src) | {entry}):
        digest.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def checkpoint_root(checkpoint_dir: str | Path) -> Path:
    """Return the folder of a run's checkpoints: ``checkpoint_dir`` as is when absolute, else under
    ``$DVC_ROOT`` when DVC set it, else under the current folder. DVC points ``DVC_ROOT`` at the
    project a queued or ``--temp`` experiment came from (its stage runs in a temporary copy), so
    such an experiment, interrupted, resumes from the project's ``checkpoints/`` like any run."""
    path = Path(checkpoint_dir).expanduser()
    root = os.environ.get("DVC_ROOT")
    return path if path.is_absolute() or not root else Path(root) / path
