"""The top-level ``plots:`` of dvc.yaml: the training curves `dvc plots show` draws and
`dvc plots diff exp1 exp2` overlays, written from :data:`PLOTS`.

Each plot reads the DVCLive curves of a training stage (``metrics/<stage>/plots/metrics/<key>.tsv``,
one ``step`` column and one named ``<key>``), with ``x: step`` and labelled axes. DVC draws every
revision of a plot on the same axes, one colour per revision (line style per curve when a plot
has several), so two experiments' curves overlay. The loss PNG each run also writes stays out of
these plots (DVC shows images of two revisions side by side, not overlaid).

``python -m gptlab.dvc_plots`` (also run by ``python -m gptlab.pipeline``) rewrites the section;
no stage imports this module, so editing a plot reruns nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Plot:
    """One panel: its title (the plot's id), the DVCLive folder it reads, the curves (tsv keys) and the y axis label."""

    title: str
    folder: str
    keys: tuple[str, ...]
    y_label: str


PLOTS = (
    Plot(
        "Pretraining loss (nats/token): running train, fixed train windows, val",
        "metrics/pretrain",
        ("running_loss", "train_loss", "val_loss"),
        "loss (nats/token)",
    ),
    Plot(
        "Pretraining bits/byte on the fixed val windows", "metrics/pretrain", ("val_bits_per_byte",), "bits/byte (metric full_val_bits_per_byte: whole split)"
    ),
    Plot("Pretraining learning rate", "metrics/pretrain", ("lr",), "learning rate"),
    Plot("Pretraining gradient norm (before clipping)", "metrics/pretrain", ("grad_norm",), "gradient norm"),
    Plot(
        "Fine-tuning loss (nats/token): running train, train, val (step 0: the base)",
        "metrics/finetune",
        ("running_loss", "train_loss", "val_loss"),
        "loss (nats/token)",
    ),
    Plot("Fine-tuning learning rate", "metrics/finetune", ("lr",), "learning rate"),
    Plot("Fine-tuning gradient norm (before clipping)", "metrics/finetune", ("grad_norm",), "gradient norm"),
)

HEADER = "# Generated from gptlab/dvc_plots.py (`python -m gptlab.pipeline`): edit PLOTS there, not here.\n"


def plots_section(plots: tuple[Plot, ...] = PLOTS) -> str:
    """Return the ``plots:`` section of dvc.yaml for ``plots`` (YAML text, ending in a blank line)."""
    lines = [HEADER, "plots:\n"]
    for plot in plots:
        lines += [f"  - {json.dumps(plot.title)}:\n", "      x: step\n", "      y:\n"]
        lines += [f"        {plot.folder}/plots/metrics/{key}.tsv: {key}\n" for key in plot.keys]
        lines += ["      x_label: step\n", f"      y_label: {json.dumps(plot.y_label)}\n"]
    return "".join(lines) + "\n"


def sync_plots(dvc_yaml: str | Path = "dvc.yaml") -> bool:
    """Replace the ``plots:`` section of ``dvc_yaml`` (with the generated-file comment above it, up
    to the next top-level key) by :func:`plots_section`; return True when that changed the file.
    GptlabError when the file has no ``plots:`` line."""
    path = Path(dvc_yaml)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    try:
        start = lines.index("plots:\n")
    except ValueError:
        raise GptlabError(f"{path}: no top-level `plots:` line to replace; add an empty `plots:` section and run again") from None
    end = start + 1
    if start and lines[start - 1] == HEADER:
        start -= 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    new = "".join(lines[:start]) + plots_section() + "".join(lines[end:])
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    print(f"dvc.yaml: plots {'updated' if sync_plots() else 'unchanged'}")
