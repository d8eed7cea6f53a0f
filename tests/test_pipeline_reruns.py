"""No recomputation of what cannot change (issue 23.2), checked with DVC itself on a scratch copy
of the pipeline whose data are placeholders: after a param change, `dvc status` names the stages
that rerun; after a stage's out changes (as its rerun would change it), the stages reading it.
A fine-tune experiment reruns neither the base's answers nor its reference loss; a generation
experiment reruns no reference loss; a bootstrap change reruns only score."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gptlab.pipeline import STAGES
from tests.test_import_graph import _changed, _dvc, _placeholders

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project (code, dvc.yaml, params.yaml) with every data dep and out a
    placeholder, committed to DVC's lock: `dvc status` is clean."""
    project = tmp_path_factory.mktemp("reruns") / "project"
    project.mkdir()
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    (project / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    _placeholders(project, stages)
    _dvc(project, "commit", "-f", "-q")
    assert _changed(project) == set()
    return project


def _set(project: Path, key: str, value) -> str:
    """Set the dotted params key in params.yaml; return the file's text before."""
    path = project / "params.yaml"
    before = path.read_text()
    params = yaml.safe_load(before)
    node = params
    *parents, last = key.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return before


def _rewrite_out(project: Path, out: str) -> None:
    """Change an out as a rerun of its stage would (a placeholder folder's file, or a JSON file)."""
    path = project / out
    target = path / "placeholder" if path.is_dir() else path
    target.write_text(target.read_text() + " rerun\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "value", "new_outs", "rerun"),
    [
        # a fine-tune experiment: finetune, then what reads the new models/finetuned; never the base's stages
        ("finetune.max_steps", 10, ["models/finetuned"], {"finetune", "generate", "reference_loss"}),
        ("finetune.lr", 1e-4, ["models/finetuned"], {"finetune", "generate", "reference_loss"}),
        # a generation experiment: both models answer again; no reference loss is recomputed
        ("generate.max_new_tokens", 32, [], {"generate", "generate_base"}),
        # then score, once the new answers are there
        ("generate.max_new_tokens", 32, ["data/responses.json", "data/responses_base.json"], {"generate", "generate_base", "score"}),
        # the prompt style changes the base's prompts too
        ("finetune.prompt_style", "alpaca", [], {"finetune", "generate_base", "reference_loss_base"}),
        ("score.bootstrap.samples", 500, [], {"score"}),
        ("score.loss_batch_size", 4, [], {"reference_loss", "reference_loss_base"}),
    ],
)
def test_an_experiment_reruns_only_what_it_changes(project, key, value, new_outs, rerun):
    outs = {out: (project / out / "placeholder" if (project / out).is_dir() else project / out).read_text() for out in new_outs}
    before = _set(project, key, value)
    try:
        for out in new_outs:
            _rewrite_out(project, out)
        assert _changed(project) == rerun
    finally:
        (project / "params.yaml").write_text(before)
        for out, text in outs.items():
            (project / out / "placeholder" if (project / out).is_dir() else project / out).write_text(text)
    assert _changed(project) == set()


def test_score_reads_no_model_and_the_reference_losses_no_generation_param():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {name: {d if isinstance(d, str) else next(iter(d)) for d in s["deps"]} for name, s in stages.items()}
    assert not {d for d in deps["score"] if d.startswith("models/")}
    assert not {d for d in deps["score"] if d.startswith("src/") and Path(d).name in ("model.py", "load_any.py", "reference_loss.py")}
    for name in ("reference_loss", "reference_loss_base"):
        assert not any(str(p).startswith(("generate", "seed")) for p in stages[name]["params"]), name
    assert "models/finetuned" not in deps["generate_base"] | deps["reference_loss_base"]
