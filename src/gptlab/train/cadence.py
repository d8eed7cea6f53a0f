"""How much a training run sees its data, said before it starts: passes over the train split,
a warning when the params would have the model memorise it, and the evaluation interval
derived from the data when ``eval_interval`` is null.

A pass is one sweep's worth of the train split: pretraining draws ``tokens_per_step`` random
tokens a step from ``train tokens`` (passes = max_steps x tokens_per_step / train tokens);
fine-tuning reads ``batch_size x grad_accum x processes`` records a step (epochs = max_steps x
that / train records). Past :data:`PRETRAIN_PASSES_WARN` passes (or :data:`FINETUNE_EPOCHS_WARN`
epochs) one stderr line names the param and the fix.

The derived interval evaluates once per pass, kept between :data:`MIN_EVALS` and
:data:`MAX_EVALS` evaluations per run: a large corpus still gets ~10 points on its curves, a
tiny one (many passes) enough points to show the val minimum before the rising-loss warning.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

from gptlab.params import FinetuneParams, LoopParams, PretrainParams

PRETRAIN_PASSES_WARN = 16  # passes over the train tokens past which pretraining memorises a small corpus
FINETUNE_EPOCHS_WARN = 5  # epochs over the train records past which fine-tuning memorises the answers
MIN_EVALS = 10  # evaluations per run at least, when the interval is derived
MAX_EVALS = 100  # evaluations per run at most, when the interval is derived


@dataclass(frozen=True)
class Cadence:
    """A run's schedule against its data: ``passes`` over the train split (float, may be < 1),
    ``steps_per_pass`` (optimizer steps per pass, float), the ``eval_interval`` in steps the
    run uses, and whether it was ``derived`` (the param was null) rather than set."""

    passes: float
    steps_per_pass: float
    eval_interval: int
    derived: bool


def derived_eval_interval(max_steps: int, steps_per_pass: float) -> int:
    """Return the evaluation interval in steps for a null ``eval_interval``: one evaluation per
    pass over the train split (``steps_per_pass`` steps), kept between :data:`MIN_EVALS` and
    :data:`MAX_EVALS` evaluations over ``max_steps`` steps; at least 1."""
    most = max(1, math.ceil(max_steps / MIN_EVALS))  # the longest interval: 10 evaluations a run
    least = max(1, math.ceil(max_steps / MAX_EVALS))  # the shortest: 100 evaluations a run
    return max(least, min(most, max(1, math.floor(steps_per_pass))))


def _cadence(p: LoopParams, steps_per_pass: float) -> Cadence:
    derived = p.eval_interval is None
    interval = derived_eval_interval(p.max_steps, steps_per_pass) if derived else p.eval_interval
    return Cadence(p.max_steps / steps_per_pass, steps_per_pass, interval, derived)


def pretrain_cadence(p: PretrainParams, train_tokens: int) -> Cadence:
    """The pretraining run's cadence: passes = ``p.max_steps x p.tokens_per_step / train_tokens``
    (tokens of the train split)."""
    return _cadence(p, max(train_tokens, 1) / p.tokens_per_step)


def finetune_cadence(p: FinetuneParams, train_records: int, processes: int = 1) -> Cadence:
    """The fine-tuning run's cadence: epochs = ``p.max_steps x p.batch_size x p.grad_accum x
    processes / train_records`` (records of the train split)."""
    return _cadence(p, max(train_records, 1) / (p.batch_size * p.grad_accum * processes))


def with_interval(p: LoopParams, cadence: Cadence) -> LoopParams:
    """Return ``p`` with ``eval_interval`` set to the cadence's (an integer for the loop)."""
    return dataclasses.replace(p, eval_interval=cadence.eval_interval)


def _interval_note(cadence: Cadence) -> str:
    how = f"eval_interval null: one per pass, {MIN_EVALS} to {MAX_EVALS} per run" if cadence.derived else "eval_interval"
    return f"evaluating every {cadence.eval_interval:,} steps ({how})"


def report_pretrain(cadence: Cadence, p: PretrainParams, train_tokens: int) -> None:
    """Print the pretraining run's passes and evaluation interval (stdout), and one warning line on
    stderr naming ``pretrain.max_steps`` and a value that fits when the passes exceed :data:`PRETRAIN_PASSES_WARN`."""
    print(
        f"pretrain: {p.max_steps:,} steps x {p.tokens_per_step:,} tokens = {cadence.passes:,.2f} passes over the {train_tokens:,} train tokens; "
        + _interval_note(cadence)
    )
    if cadence.passes > PRETRAIN_PASSES_WARN:
        fit = max(1, math.floor(PRETRAIN_PASSES_WARN * cadence.steps_per_pass))
        print(
            f"pretrain: warning: pretrain.max_steps={p.max_steps} makes {cadence.passes:,.1f} passes over the {train_tokens:,} train tokens "
            f"(more than {PRETRAIN_PASSES_WARN}): the model will memorise them and val loss will rise; "
            f"lower pretrain.max_steps (e.g. to {fit:,}) or pretrain.tokens_per_step, or use a larger corpus",
            file=sys.stderr,
        )


def report_finetune(cadence: Cadence, p: FinetuneParams, train_records: int) -> None:
    """Print the fine-tuning run's epochs and evaluation interval (stdout), and one warning line on
    stderr naming ``finetune.max_steps`` and a value that fits when the epochs exceed :data:`FINETUNE_EPOCHS_WARN`."""
    print(f"finetune: {p.max_steps:,} steps = {cadence.passes:,.2f} epochs over the {train_records:,} train records; " + _interval_note(cadence))
    if cadence.passes > FINETUNE_EPOCHS_WARN:
        fit = max(1, math.floor(FINETUNE_EPOCHS_WARN * cadence.steps_per_pass))
        print(
            f"finetune: warning: finetune.max_steps={p.max_steps} makes {cadence.passes:,.1f} epochs over the {train_records:,} train records "
            f"(more than {FINETUNE_EPOCHS_WARN}): the model will memorise the answers; lower finetune.max_steps (e.g. to {fit:,}) or add records",
            file=sys.stderr,
        )
