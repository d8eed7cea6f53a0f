"""A stage run by hand (not by DVC) says which of the pipeline's tracked outputs it replaced."""

import shutil
from pathlib import Path

import yaml

from gptlab.pipeline import stage_main, stage_outs

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = {"stages": {"instructions": {"cmd": "python -m stages.instructions", "outs": ["data/instructions", {"metrics/live": {"cache": False}}]}}}


def fake_stage():
    """A ``run`` that looks like stages/instructions.py's and writes both of its outs."""
    ns = {"__name__": "stages.instructions"}
    exec(
        "from pathlib import Path\n"
        "def run(params):\n"
        "    for d in ('data/instructions', 'metrics/live'):\n"
        "        Path(d).mkdir(parents=True, exist_ok=True)\n"
        "        (Path(d) / 'x.json').write_text('[]')\n",
        ns,
    )
    return ns["run"]


def project(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)


def test_a_stage_run_by_hand_says_it_replaced_the_pipelines_output(tmp_path, monkeypatch, capsys):
    project(tmp_path, monkeypatch)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert stage_outs("instructions") == ["data/instructions"]  # the cached out: what `dvc checkout` restores
    assert stage_main(fake_stage(), argv=[]) == 0
    out = capsys.readouterr().out
    assert "gptlab: replaced data/instructions (tracked by DVC stage instructions); `dvc repro` or `dvc checkout`" in out
    assert "metrics/live" not in out


def test_under_dvc_a_stage_says_nothing(tmp_path, monkeypatch, capsys):
    project(tmp_path, monkeypatch)
    monkeypatch.setenv("DVC_STAGE", "instructions")  # what DVC sets for every stage command it runs
    assert stage_main(fake_stage(), argv=[]) == 0
    assert "replaced" not in capsys.readouterr().out
