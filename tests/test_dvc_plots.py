"""dvc.yaml's plots are the generated ones, and `dvc plots diff` of two revisions overlays their
curves: one panel per plot holding both revisions, step on x, labelled axes (issue 23.3)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.dvc_plots import PLOTS, plots_section, sync_plots

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_holds_the_generated_plots_and_no_image():
    text = (ROOT / "dvc.yaml").read_text()
    assert plots_section() in text + "\n", "dvc.yaml's plots are stale: run `python -m gptlab.pipeline`"
    plots = yaml.safe_load(text)["plots"]
    assert [next(iter(p)) for p in plots] == [p.title for p in PLOTS]
    for entry in plots:
        (definition,) = entry.values()
        assert definition["x"] == "step" and definition["x_label"] == "step" and definition["y_label"] not in ("", "y")
        assert all(path.endswith(f"/{field}.tsv") for path, field in definition["y"].items())
    assert ".png" not in yaml.safe_dump(plots)


def test_the_generator_is_no_stage_dependency():
    # deps are the stages' import closures (tests/test_pipeline_contract.py): editing a plot reruns nothing
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert all("src/gptlab/dvc_plots.py" not in stage["deps"] for stage in stages.values())


def test_sync_plots_replaces_the_section_once(tmp_path):
    path = tmp_path / "dvc.yaml"
    path.write_text("stages: {}\nplots:\n  - old.tsv:\n      x: step\n\nartifacts: {}\n")
    assert sync_plots(path) and not sync_plots(path)
    data = yaml.safe_load(path.read_text())
    assert data["stages"] == {} and data["artifacts"] == {} and len(data["plots"]) == len(PLOTS)


def write_run(live, scale: float) -> None:
    """A training run's DVCLive folder as the loop writes it (evaluations from step 0, log points), losses times ``scale``."""
    from gptlab.train.logger import LiveLogger

    history = [{"step": s, "tokens": 64 * s, "train_loss": scale * (4 - s / 10), "val_loss": scale * (4.1 - s / 10), "val_bits_per_byte": scale * (1.5 - s / 40)}
               for s in (0, 5, 10)]  # fmt: skip
    train_log = [{"step": s, "running_loss": scale * (3.9 - s / 10), "lr": 1e-3 * min(1, s / 4), "grad_norm": scale * 2} for s in (2, 4, 6, 8, 10)]
    logger = LiveLogger(live, history, train_log)
    logger.finish({"val_loss": history[-1]["val_loss"]}, history, "test", train_log)


@pytest.mark.slow
def test_dvc_plots_diff_overlays_two_revisions_in_one_panel_per_plot(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def run(*args):
        r = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text(plots_section())
    for scale in (1.0, 0.8):  # two experiments
        for stage in ("pretrain", "finetune"):
            write_run(repo / "metrics" / stage, scale)
        run("git", "add", "-A")
        run("git", "commit", "-qm", f"scale {scale}")
    panels = json.loads(run(sys.executable, "-m", "dvc", "plots", "diff", "HEAD~1", "HEAD", "--json"))["data"]
    assert sorted(panels) == sorted(p.title for p in PLOTS)
    for plot in PLOTS:
        (panel,) = panels[plot.title]  # one overlay, not one panel per revision
        assert panel["type"] == "vega" and panel["revisions"] == ["HEAD~1", "HEAD"]
        content = panel["content"]
        values = content["data"]["values"]
        assert {v["rev"] for v in values} == {"HEAD~1", "HEAD"}
        for key in plot.keys:  # every curve of the plot, from both revisions
            assert {v["rev"] for v in values if key in v} == {"HEAD~1", "HEAD"}, (plot.title, key)
        assert content["encoding"]["color"]["field"] == "rev"  # one colour per experiment
        assert content["encoding"]["x"]["title"] == "step"
        assert content["layer"][0]["encoding"]["y"]["title"] == plot.y_label
    val = [v for v in panels[PLOTS[4].title][0]["content"]["data"]["values"] if "val_loss" in v]
    assert sorted(float(v["step"]) for v in val) == [0, 0, 5, 5, 10, 10]  # the fine-tuning curves start at step 0 (the base)
