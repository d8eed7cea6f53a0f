"""The README's experiment commands, run as written on a scratch DVC project shaped like ours
(code deps under src/ and stages/, a data folder, metrics files sharing names, a tokens/s
figure): the readable `dvc exp show` view leaves no hash column, and a queued grid runs."""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
VIEW = "dvc exp show --only-changed --drop '(src"  # the readable default view's line
HASH = re.compile(r"\b[0-9a-f]{32}\b")

STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))["finetune"]
code = pathlib.Path("src/gptlab/model.py").read_text()
loss = round(2.0 - p["lr"] * 1000 * p["max_steps"] / 100 + len(code) / 1000, 5)
pathlib.Path("metrics/finetune").mkdir(parents=True, exist_ok=True)
json.dump({"val_loss": loss, "tokens_per_s": 250.0 + len(code), "mfu": 0.01, "step": p["max_steps"]}, open("metrics/finetune/metrics.json", "w"))
json.dump({"finetuned": {"loss": loss - 0.1, "squad_token_f1": 0.3}, "tokens_per_s": 99.0}, open("metrics/score.json", "w"))
pathlib.Path("models").mkdir(exist_ok=True)
pathlib.Path("models/finetuned.txt").write_text(str(p))
"""

DVC_YAML = """\
stages:
  finetune:
    cmd: python stages/finetune.py
    deps: [stages/finetune.py, src/gptlab/model.py, data/instructions]
    params: [finetune]
    outs: [models/finetuned.txt]
    metrics:
      - metrics/finetune/metrics.json: {cache: false}
      - metrics/score.json: {cache: false}
"""


def readme_command(prefix: str) -> list[str]:
    """The README's one command line starting with ``prefix`` (its trailing # comment dropped), as argv."""
    lines = [line for line in README.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"README shows {len(lines)} lines starting with {prefix!r}"
    return shlex.split(lines[0], comments=True)


def run(cwd: Path, argv: list[str]) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", DVC_NO_UPDATE_CHECK="1")
    if argv[0] == "dvc":
        argv = [sys.executable, "-m", "dvc", *argv[1:]]
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first Markdown table in ``markdown``."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return rows[0], [r for r in rows[2:]]


@pytest.fixture
def project(tmp_path):
    """A committed scratch DVC project with one finetune-like stage run once."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "finetune.py").write_text(STAGE)
    (tmp_path / "src" / "gptlab").mkdir(parents=True)
    (tmp_path / "src" / "gptlab" / "model.py").write_text("# the model\n")
    (tmp_path / "data" / "instructions").mkdir(parents=True)
    (tmp_path / "data" / "instructions" / "train.json").write_text("[]\n")
    (tmp_path / "params.yaml").write_text("finetune:\n  lr: 0.0003\n  max_steps: 40\n  batch_size: 4\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / ".gitignore").write_text("/models/\n")
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    run(tmp_path, ["dvc", "init", "-q"])
    run(tmp_path, ["dvc", "repro", "-q"])
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "baseline"], cwd=tmp_path, check=True)
    return tmp_path


def test_the_readme_exp_show_view_has_the_changed_params_and_figures_and_no_hash(project):
    run(project, ["dvc", "exp", "run", "-S", "finetune.max_steps=20"])
    (project / "src" / "gptlab" / "model.py").write_text("# the model, edited\n")  # a code change: its hash differs
    run(project, ["dvc", "exp", "run"])
    plain = run(project, ["dvc", "exp", "show", "--only-changed", "--md"])
    header, _ = table(plain)
    assert "src/gptlab/model.py" in header and HASH.search(plain)  # what the view removes is there without it

    view = readme_command(VIEW)
    header, rows = table(run(project, view))
    assert not HASH.search(" ".join(" ".join(r) for r in rows)), rows
    assert not [h for h in header if re.match(r"(src|stages|data|models)/", h) or h.endswith(("tokens_per_s", "mfu")) or h == "Created"], header
    assert "finetune.max_steps" in header and "val_loss" in header and "finetuned.loss" in header, header
    assert len(rows) == 4 and {r[header.index("finetune.max_steps")] for r in rows} == {"40", "20"}, rows


@pytest.mark.slow
def test_the_readme_queue_and_grid_run_every_combination(project):
    queued = run(project, readme_command("dvc exp run --queue -S 'finetune.lr="))
    assert queued.count("Queued experiment") == 2, queued
    run(project, readme_command("dvc queue start"))
    deadline = time.monotonic() + 240
    while True:
        status = run(project, ["dvc", "queue", "status"])
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    header, rows = table(run(project, readme_command(VIEW)))
    assert {r[header.index("finetune.lr")] for r in rows} >= {"0.0001", "0.0003"}, rows
    assert not HASH.search(" ".join(" ".join(r) for r in rows))
