"""The README says what the code does: every preset, every stage, every command it shows, and
the figures of the committed run (read from the committed metrics)."""

import json
import re
from pathlib import Path

import pytest

from gptlab.cli import build_parser
from gptlab.config import PRESETS
from gptlab.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def metrics(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def test_every_preset_and_stage_is_documented():
    for name in PRESETS:
        assert f"`{name}`" in README, f"README does not list the preset {name}"
    for name in STAGES:
        assert f"`{name}`" in README, f"README does not describe the stage {name}"


def test_every_gptlab_command_shown_exists():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    shown = set(re.findall(r"^\s*gptlab ([a-z_]+)", README, flags=re.M)) | set(re.findall(r"`gptlab ([a-z_]+)", README))
    assert shown and shown <= commands, shown - commands


def test_no_placeholder_is_left():
    assert "{{" not in README and "TBD" not in README


def figure(value: float, digits: int = 3) -> str:
    return f"{value:,.{digits}f}"


@pytest.mark.parametrize(
    "path, keys, digits",
    [
        ("metrics/pretrain/metrics.json", ["val_loss", "full_val_bits_per_byte"], 3),
        ("metrics/finetune/metrics.json", ["base_val_loss", "val_loss"], 3),
    ],
)
def test_stated_training_figures_match_the_committed_metrics(path, keys, digits):
    data = metrics(path)
    for key in keys:
        assert figure(data[key], digits) in README, f"README does not state {path}:{key} = {figure(data[key], digits)}"


def test_stated_score_figures_match_the_committed_metrics():
    data = metrics("metrics/score.json")
    for engine in ("finetuned", "base"):
        for key in ("loss", "squad_token_f1", "rougeL_f1"):
            assert figure(data[engine][key]) in README, f"README does not state score {engine}.{key} = {figure(data[engine][key])}"
    dup = metrics("metrics/instructions.json")["duplicates_dropped"]
    assert f"{dup} of its 999 records" in README


def test_the_stated_metrics_show_columns_match_the_committed_metrics():
    """The README's "`dvc metrics show` of the default run has N columns (M figures" is what DVC
    shows for the committed metrics: N distinct figure names, M figures."""
    if "train_passes" not in metrics("metrics/pretrain/metrics.json"):
        pytest.skip("metrics/ predate train_passes (issue 23): rerun `make run` and commit metrics/, then this checks the README's count")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)[""]["data"]

    def flat(d: dict, prefix: str = "") -> list[str]:
        return [k for key, v in d.items() for k in (flat(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]

    names = [name for f in shown.values() for name in flat(f.get("data", {}))]
    stated = re.search(r"`dvc metrics show` of the default run has\s+(\d+) columns \((\d+) figures", README)
    assert stated, "README no longer states the columns of `dvc metrics show`"
    assert (int(stated.group(1)), int(stated.group(2))) == (len(set(names)), len(names)), (
        f"README says {stated.group(1)} columns ({stated.group(2)} figures); the committed metrics have {len(set(names))} ({len(names)}): fix the README"
    )
