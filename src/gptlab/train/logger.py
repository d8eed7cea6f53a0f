"""A training run's DVCLive log (rank 0): one row per evaluation and one per log point (the curves
under ``plots/metrics/``), the loss figure, the samples and the summary."""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json

# The figures of a training run that `dvc metrics show` / `dvc exp show` compare (the fixed
# windows' val_bits_per_byte stays in the plots: the whole val split's figure supersedes it).
# Throughput (tokens_per_s, mfu) depends on the machine, not the params: it stays in
# summary.json and the tokens_per_s / mfu curves, out of the comparison.
COMPARABLE_METRICS = (
    "train_loss",
    "val_loss",
    "full_val_bits_per_byte",
    "best_val_loss",
    "base_val_loss",
    "val_loss_gain",
    "train_passes",
    "train_epochs",
)

# What each evaluation row draws: plots/metrics/<key>.tsv, x = step (train_loss: fixed train windows).
PLOTTED = ("train_loss", "val_loss", "val_perplexity", "val_bits_per_byte", "tokens", "tokens_per_s", "mfu")
# What each log point draws: the running train loss, the learning rate and the gradient norm.
LOGGED = ("running_loss", "lr", "grad_norm")


class LiveLogger:
    """A fresh DVCLive log for ``live_dir`` with ``history`` and ``train_log`` (the evaluation
    rows and log points of a resumed run) replayed.

    It is written in a temporary folder beside ``live_dir`` (:func:`gptlab.io.atomic_dir`) and
    swapped in by :meth:`finish`; :meth:`close` without :meth:`finish` (a failed run) discards
    it, so ``live_dir`` keeps the previous run's files until a run completes."""

    def __init__(self, live_dir: str | Path, history: list[dict], train_log: list[dict] = ()):
        from dvclive import Live  # dvclive imports its DVC integration: only when a run logs

        self.target = Path(live_dir)
        self._writing = atomic_dir(self.target)
        self.dir = self._writing.__enter__()
        self.live = Live(dir=str(self.dir), dvcyaml=None, save_dvc_exp=False, report=None)
        for row in history:
            self.log(row)
        for row in train_log:
            self.log_train(row)

    def close(self) -> None:
        """Discard the log unless :meth:`finish` swapped it in (``live_dir`` stays as it was)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.__exit__(GptlabError, GptlabError("the run did not complete"), None)

    def log(self, row: dict) -> None:
        """Log one evaluation: numbers as DVCLive metrics, the sample text to ``samples.txt`` beside them."""
        self._log_metrics(row, PLOTTED)
        if "sample" in row:
            with open(self.dir / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"--- step {row['step']} (val loss {row['val_loss']:.4f})\n{row['sample']}\n\n")

    def log_train(self, row: dict) -> None:
        """Log one log point: running train loss, learning rate and gradient norm at ``row["step"]``."""
        self._log_metrics(row, LOGGED)

    def _log_metrics(self, row: dict, keys: tuple[str, ...]) -> None:
        """Append ``row``'s values of ``keys`` (those it has) to their curves at ``row["step"]``."""
        self.live.step = row["step"]
        for key in keys:
            if key in row:
                self.live.log_metric(key, row[key])

    def finish(self, summary: dict, history: list[dict], name: str, train_log: list[dict] = ()) -> None:
        """Write ``metrics.json`` (only :data:`COMPARABLE_METRICS`), the loss figure (evaluations
        ``history`` and log points ``train_log``) and
        ``summary.json`` (the whole summary: run id, parameters, seconds, device... are provenance)."""
        live = self.live
        for key, value in summary.items():
            if key in COMPARABLE_METRICS and isinstance(value, (int, float)):
                live.summary[key] = value
        for key in [k for k in live.summary if k not in COMPARABLE_METRICS and k != "step"]:
            del live.summary[key]
        if history:
            from gptlab.plots import loss_figure  # matplotlib: only when a run has a plot to draw

            live.log_image("loss.png", loss_figure(history, name, train_log, summary.get("full_val_bits_per_byte")))
        live.make_summary()
        live.end()
        write_json(self.dir / "summary.json", summary)
        writing, self._writing = self._writing, None
        writing.__exit__(None, None, None)  # swap the finished log in
