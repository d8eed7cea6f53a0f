"""`gptlab compare` on a scratch DVC repository whose experiments write their score metrics
directly (no training): the changed params, the figures with intervals, `*` on significance."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.cli import main
from gptlab.errors import GptlabError
from gptlab.score.compare import changed_params, compare, experiments

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
# the stage writes metrics/score.json from the params: 40 fine-tuning steps give a difference
# whose interval excludes 0, 10 steps one that does not
WRITE = """
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
steps, tokens = p["finetune"]["max_steps"], p["generate"]["max_new_tokens"]
f1 = 0.27 + steps / 1000 + tokens / 10000
lo, hi = (0.016, 0.067) if steps == 40 else (-0.02, 0.031)
os.makedirs("metrics", exist_ok=True)
json.dump({
    "finetuned": {"squad_token_f1": f1, "squad_token_f1_low": f1 - 0.03, "squad_token_f1_high": f1 + 0.03, "loss": 1.63, "loss_low": 1.55, "loss_high": 1.71},
    "base": {"squad_token_f1": 0.2764, "squad_token_f1_low": 0.24, "squad_token_f1_high": 0.31, "loss": 1.69, "loss_low": 1.61, "loss_high": 1.77},
    "diff": {"squad_token_f1": f1 - 0.2764, "squad_token_f1_low": lo, "squad_token_f1_high": hi, "squad_token_f1_significant": steps == 40,
             "loss": -0.06, "loss_low": -0.068, "loss_high": -0.05, "loss_significant": True},
}, open("metrics/score.json", "w"))
"""
DVC_YAML = """stages:
  score:
    cmd: python write.py
    deps: [write.py]
    params: [finetune, generate, score]
    metrics:
      - metrics/score.json:
          cache: false
"""


def run(cwd, *args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", DVC_NO_UPDATE_CHECK="1")
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A DVC repo: the baseline commit (40 steps, 64 tokens), experiments `steps10` and `tokens32`."""
    root = tmp_path_factory.mktemp("compare")
    (root / "params.yaml").write_text("finetune:\n  max_steps: 40\ngenerate:\n  max_new_tokens: 64\nscore:\n  bootstrap:\n    confidence: 0.95\n")
    (root / "write.py").write_text(WRITE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    run(root, *GIT, "init", "-q")
    run(root, sys.executable, "-m", "dvc", "init", "-q")
    run(root, sys.executable, "-m", "dvc", "repro", "-q")
    run(root, *GIT, "add", "-A")
    run(root, *GIT, "commit", "-qm", "baseline")
    run(root, sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "steps10", "-S", "finetune.max_steps=10")
    run(root, *GIT, "checkout", "-q", "--", "params.yaml", "metrics", "dvc.lock")
    run(root, sys.executable, "-m", "dvc", "exp", "run", "-q", "-n", "tokens32", "-S", "generate.max_new_tokens=32")
    return root


def test_two_experiments_side_by_side_with_intervals_and_significance(repo):
    table = compare(["steps10", "tokens32"], repo)
    lines = table.splitlines()
    assert lines[0].split() == ["steps10", "tokens32"]
    assert set(
        changed_params([experiments(json.loads(run(repo, sys.executable, "-m", "dvc", "exp", "show", "--json")))[n] for n in ("steps10", "tokens32")])
    ) == {
        "finetune.max_steps",
        "generate.max_new_tokens",
    }
    assert "finetune.max_steps" in table and "score.bootstrap.confidence" not in table  # unchanged params stay out
    f1 = next(line for line in lines if line.startswith("F1 fine-tuned - base"))
    # steps10: 0.27 + 0.01 + 0.0064 - 0.2764 = +0.010, interval [-0.020, +0.031]: not significant
    # tokens32: 40 steps: 0.27 + 0.04 + 0.0032 - 0.2764 = +0.037 [+0.016, +0.067], significant
    assert "+0.010 [-0.020, +0.031]  " in f1 and "+0.037 [+0.016, +0.067] *" in f1
    assert f1.count("*") == 1
    loss = next(line for line in lines if line.startswith("loss fine-tuned - base"))
    assert loss.count("-0.060 [-0.068, -0.050] *") == 2
    assert next(line for line in lines if line.startswith("F1 fine-tuned  ")).split()[2:] == ["0.286", "[0.256,", "0.316]", "0.313", "[0.283,", "0.343]"]
    assert "95% bootstrap interval" in table


def test_no_argument_shows_the_workspace_and_its_baseline(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[0] == "workspace" and len(header) == 2  # and the baseline branch
    assert "generate.max_new_tokens" in out  # the workspace holds tokens32's params


def test_an_unknown_experiment_is_one_line_naming_the_known_ones(repo, capsys, monkeypatch):
    with pytest.raises(GptlabError, match="no experiment named nope in `dvc exp show`; known: workspace, .*steps10"):
        compare(["nope"], repo)
    monkeypatch.chdir(repo)
    assert main(["compare", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
