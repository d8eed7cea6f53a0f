"""Figures people would rather look at than read: loss curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_figure(history: list[dict], title: str = "pretraining", train_log: list[dict] = (), full_val_bits_per_byte: float | None = None) -> Figure:
    """Return a figure against optimizer steps: the running train loss of ``train_log`` (log
    points: step, running_loss, lr), the train and val loss of ``history`` (evaluations: step,
    train_loss, val_loss; step 0 is the model before any update), all in nats/token, and the
    learning rate on a second axis (the log points', else the evaluations'). The title names the
    last val loss and ``full_val_bits_per_byte``, the whole val split's figure the metrics hold."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    logged = [r for r in train_log if "running_loss" in r]
    if logged:
        ax.plot([r["step"] for r in logged], [r["running_loss"] for r in logged], color="tab:blue", lw=1, alpha=0.6, label="train loss (running mean)")
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["train_loss"] for r in history], color="tab:blue", marker="o", ms=3, label="train loss (fixed windows)")
    ax.plot(steps, [r["val_loss"] for r in history], color="tab:orange", marker="o", ms=3, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_rows = list(train_log) or history
    lr_ax.plot([r["step"] for r in lr_rows], [r["lr"] for r in lr_rows], color="grey", ls="--", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    last = history[-1]
    bpb = f"; whole val split {full_val_bits_per_byte:.3f} bits/byte" if full_val_bits_per_byte is not None else ""
    ax.set_title(f"{title}: val {last['val_loss']:.3f} nats/token at step {last['step']}{bpb}")
    fig.tight_layout()
    return fig
