"""`dvc plots show` renders with no network: the committed config names an inlined-Vega template."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.plots_offline import write_template

ROOT = Path(__file__).resolve().parents[1]


def test_config_points_dvc_at_the_offline_template():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"html_template\s*=\s*plots/offline.html", config)
    assert "/.dvc/plots/" in (ROOT / ".gitignore").read_text()


@pytest.mark.slow
def test_dvc_plots_show_writes_html_without_external_scripts(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)
    write_template(repo / ".dvc" / "plots" / "offline.html")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n[plots]\n    html_template = plots/offline.html\n")
    (repo / "loss.tsv").write_text("step\tloss\n0\t4.0\n1\t3.0\n2\t2.5\n")
    (repo / "dvc.yaml").write_text("plots:\n  - loss.tsv:\n      x: step\n      y: loss\n")
    r = subprocess.run([*dvc, "plots", "show", "-o", "out"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (repo / "out" / "index.html").read_text()
    assert "vegaEmbed(" in html and "window.vegaEmbed=" in html  # the plot and the inlined library
    assert not re.search(r"<script[^>]+src=", html), "no external script"
    assert "cdn.jsdelivr" not in html
