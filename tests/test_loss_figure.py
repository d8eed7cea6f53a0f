"""The loss figure names the one bits/byte figure the metrics hold (issue 23.3)."""

from gptlab.plots import loss_figure


def test_the_title_names_the_whole_val_bits_per_byte_not_the_fixed_windows():
    history = [{"step": s, "train_loss": 4 - s / 100, "val_loss": 4.1 - s / 100, "val_bits_per_byte": 2.054, "lr": 1e-3} for s in (0, 100, 200)]
    train_log = [{"step": s, "running_loss": 4 - s / 100, "lr": 1e-3 * min(1, s / 50), "grad_norm": 0.5} for s in range(10, 201, 10)]
    fig = loss_figure(history, "pretrain", train_log, full_val_bits_per_byte=2.10645)
    title = fig.axes[0].get_title()
    assert "whole val split 2.106 bits/byte" in title and "2.054" not in title
    loss_ax, lr_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train loss (running mean)", "train loss (fixed windows)", "val loss"]
    assert list(lr_ax.get_lines()[0].get_xdata()) == list(range(10, 201, 10))  # the lr of every log point: warmup visible
    assert loss_ax.get_xlabel() == "step" and "bits/byte" not in loss_figure(history, "finetune").axes[0].get_title()
