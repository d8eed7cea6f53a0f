"""What the training loop carries from one step to the next and across a resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopState:
    """The loop's position: optimizer steps done, tokens seen (all ranks), the lowest val loss so
    far (nats/token), one row per evaluation (the first at step 0, before any update), training
    seconds (evaluations excluded), the tokens/s of a step whose evaluation was cut short (redone
    on resume), one row per log point (step, running loss, lr, gradient norm: the curves between
    evaluations, replayed into the DVCLive log on resume) and the running sums since the last log
    point (:meth:`gptlab.train.running.RunningMeans.state`)."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = float("inf")
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    pending_tokens_per_s: float = 0.0
    train_log: list[dict] = field(default_factory=list)
    running: dict = field(default_factory=dict)

    def evaluated(self, step: int) -> bool:
        """True when the last evaluation logged is the one of ``step``."""
        return bool(self.history) and self.history[-1]["step"] == step

    def to_json(self, run_id: str, data_rng: Any, pending: bool) -> dict:
        """Return the ``state.json`` entries of a training checkpoint (``data_rng``: the batch
        source's position); ``pending``: the evaluation of this step is still to be done."""
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss, "history": self.history,
                 "data_rng": data_rng, "run_id": run_id, "train_seconds": self.train_seconds, "train_log": self.train_log, "running": self.running}  # fmt: skip
        if pending:
            state["pending_tokens_per_s"] = self.pending_tokens_per_s
        return state

    @classmethod
    def from_json(cls, state: dict) -> LoopState:
        """The state :meth:`to_json` saved (checkpoints older than ``train_seconds`` count 0 seconds,
        older than ``train_log`` have no log rows)."""
        return cls(state["step"], state["tokens_seen"], state["best_val_loss"], state["history"],
                   state.get("train_seconds", 0.0), state.get("pending_tokens_per_s", 0.0), state.get("train_log", []), state.get("running", {}))  # fmt: skip
