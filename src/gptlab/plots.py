"""Figures people would rather look at than read: loss curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_figure(history: list[dict], title: str = "pretraining") -> Figure:
    """Return a figure of train and val loss (nats/token) against tokens seen, with the
    learning rate on a second axis. ``history``: rows with tokens, train_loss, val_loss, lr."""
    tokens = [r["tokens"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(tokens, [r["train_loss"] for r in history], marker="o", ms=3, label="train loss")
    ax.plot(tokens, [r["val_loss"] for r in history], marker="o", ms=3, label="val loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(tokens, [r["lr"] for r in history], color="grey", ls="--", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    last = history[-1]
    bpb = f", {last['val_bits_per_byte']:.3f} bits/byte" if last.get("val_bits_per_byte") is not None else ""
    ax.set_title(f"{title}: val {last['val_loss']:.3f} nats/token{bpb}")
    fig.tight_layout()
    return fig
