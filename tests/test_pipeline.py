"""The whole pipeline as a user runs it, on a scratch copy of the project with local sources:
`dvc repro`, a no-op, partial reruns, a remote (push, pull into a fresh clone), artifacts,
readable metrics and experiment tables."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def dvc(cwd, *args, ok=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", DVC_NO_UPDATE_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def git(cwd, *args):
    subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A copy of the project (code, dvc.yaml, tiny params, local sources) after one `dvc repro`."""
    tmp = tmp_path_factory.mktemp("pipeline")
    project = tmp / "project"
    project.mkdir()
    for name in ("dvc.yaml", "stages", "src", ".gitignore"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    corpus = tmp / "corpus"
    corpus.mkdir()
    for i, text in enumerate(["First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n", "HAMLET.\nTo be, or not to be.\n"] * 3):
        (corpus / f"{i}.txt").write_text(text * 8)
    archive = shutil.make_archive(str(tmp / "corpus-1.0"), "gztar", root_dir=tmp, base_dir="corpus")
    records = [{"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else f"{i}", "output": f"{i}"} for i in range(20)]
    (tmp / "records.json").write_text(json.dumps(records))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["sources"] = {"corpus": {"uri": Path(archive).as_uri() + "#*.txt"}, "instructions": {"uri": (tmp / "records.json").as_uri()}}
    params["download"]["cache_dir"] = str(tmp / "cache")
    params["model"] = {"preset": "gpt-tiny", "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1}
    params["pretrain"].update(max_steps=4, batch_size=2, tokens_per_step=64, warmup_steps=1, eval_interval=2, eval_windows=2,
                              sample_tokens=4, checkpoint_dir=str(tmp / "ckpt"))  # fmt: skip
    params["convert"]["source"] = "pretrained"
    # our Shakespeare model as the base: GPT-2's tokenizer, no chat template, so an Alpaca prompt
    params["finetune"].update(
        max_steps=2,
        batch_size=2,
        warmup_steps=1,
        eval_interval=2,
        checkpoint_dir=str(tmp / "ft-ckpt"),
        prompt_style="alpaca",
        allowed_max_length=None,
        mask_prompt=False,
    )
    params["generate"].update(max_new_tokens=4, batch_size=4)
    write_params(project, params)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "scratch")  # DVCLive refuses a repository without commits
    out = dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "run")
    return project, params, out


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_the_outputs(scratch):
    project, _, out = scratch
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert sorted(p.name for p in (project / "data" / "shards").iterdir()) == ["meta.json", "tokenizer.json", "train-00000.bin", "val-00000.bin"]
    assert (project / "models" / "pretrained" / "tokenizer.json").read_bytes() == (project / "data" / "shards" / "tokenizer.json").read_bytes()
    assert {"best", "config.json", "model.safetensors"} <= {p.name for p in (project / "models" / "pretrained").iterdir()}
    assert sorted(p.name for p in (project / "data" / "instructions").iterdir()) == ["test.json", "train.json", "val.json"]
    assert {"adapter", "config.json", "model.safetensors"} <= {p.name for p in (project / "models" / "finetuned").iterdir()}
    responses = json.loads((project / "data" / "responses.json").read_text())
    assert len(responses) == 2 and set(responses[0]) == {"instruction", "input", "output", "response"}
    assert json.loads((project / "data" / "responses_litgpt.json").read_text()) == []  # the litgpt track is off
    assert (project / "data" / "scores.csv").read_text().count("\n") == 5  # header, 2 fine-tuned and 2 base rows
    # outputs honour the umask (readable by others), not mkdtemp's 0700
    for path in (project / "models" / "finetuned", project / "data" / "shards" / "meta.json", project / "metrics" / "score.json"):
        assert path.stat().st_mode & 0o044 == 0o044, path


@pytest.mark.slow
def test_metrics_show_only_comparable_figures(scratch):
    project, _, _ = scratch
    shown = json.loads(dvc(project, "metrics", "show", "--json"))
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            (walk(f"{prefix}.{k}", v) if isinstance(v, dict) else flat.__setitem__(f"{prefix}.{k}", v))

    for path, data in shown[""]["data"].items():
        walk(path, data["data"])
    score = [k for k in flat if k.startswith("metrics/score.json.")]
    # training 13 (incl. base_val_loss, val_loss_gain), instructions 6, tokenize 3, convert 1
    assert len(flat) - len(score) <= 23, sorted(flat)
    # per engine 15 (means, precision/recall, lengths, F1 at matched length, 95% bounds); diff 16
    assert len(score) <= 46, sorted(score)
    for key, value in flat.items():
        if key.endswith("_significant"):  # the fine-tuned minus base interval excludes 0
            assert isinstance(value, bool), key
            continue
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key}={value!r} is not a figure to compare"
    assert any(k.endswith("val_loss") for k in flat) and any(k.endswith("base_val_loss") for k in flat)


@pytest.mark.slow
def test_noop_then_partial_reruns(scratch):
    project, params, _ = scratch
    assert "Data and pipelines are up to date" in dvc(project, "repro")
    params = json.loads(json.dumps(params))
    params["generate"].update(max_new_tokens=3, temperature=1.0, seed=7)  # only the responses change
    write_params(project, params)
    before = {name: sha256(project / "data" / name) for name in ("responses.json", "responses_base.json")}
    out = dvc(project, "repro")
    assert "Running stage 'generate'" in out and "Running stage 'generate_base'" in out
    assert "Running stage 'finetune'" not in out and "Running stage 'pretrain'" not in out
    assert "Running stage 'reference_loss'" not in out and "Running stage 'reference_loss_base'" not in out  # no generation param
    # score reruns exactly when the responses it reads changed (a tiny model may answer the same)
    changed = any(sha256(project / "data" / name) != digest for name, digest in before.items())
    assert ("Running stage 'score'" in out) == changed
    assert "Data and pipelines are up to date" in dvc(project, "repro")
    # a fine-tune experiment: the base neither answers again nor has its loss recomputed
    base_files = {name: sha256(project / "data" / name) for name in ("responses_base.json", "reference_loss_base.json")}
    params["finetune"].update(max_steps=3)
    write_params(project, params)
    out = dvc(project, "repro")
    assert "Running stage 'finetune'" in out and "Running stage 'reference_loss'" in out
    assert "Running stage 'generate_base'" not in out and "Running stage 'reference_loss_base'" not in out
    assert {name: sha256(project / "data" / name) for name in base_files} == base_files
    assert "Data and pipelines are up to date" in dvc(project, "repro")
    # one line of a module only pretrain imports reruns pretrain and what follows, not tokenize
    plots = project / "src" / "gptlab" / "plots.py"
    plots.write_text(plots.read_text() + "\n# touched\n")
    out = dvc(project, "repro")
    assert "Running stage 'pretrain'" in out and "Running stage 'tokenize'" not in out
    git(project, "checkout", "--", "params.yaml", "src")
    dvc(project, "repro")


@pytest.mark.slow
def test_push_to_a_local_remote_and_pull_into_a_fresh_clone(scratch, tmp_path):
    project, _, _ = scratch
    dvc(project, "remote", "add", "-d", "-f", "local", str(tmp_path / "remote"))
    dvc(project, "push")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "remote", "--allow-empty")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    dvc(clone, "pull")
    for rel in ("models/finetuned/model.safetensors", "data/shards/train-00000.bin", "data/responses.json"):
        assert sha256(clone / rel) == sha256(project / rel), rel
    assert "Data and pipelines are up to date" in dvc(clone, "status") or "up to date" in dvc(clone, "status")
    # an artifact by name, from the repository, as the README shows: DVC finds its revision by the
    # version tag GTO registers (without one: "Unable to find artifact")
    subprocess.run([str(Path(sys.executable).parent / "gto"), "register", "finetuned-gpt"], cwd=project, check=True, capture_output=True)
    dvc(tmp_path, "artifacts", "get", str(project), "finetuned-gpt", "-o", str(tmp_path / "got"))
    assert sha256(tmp_path / "got" / "model.safetensors") == sha256(project / "models" / "finetuned" / "model.safetensors")


@pytest.mark.slow
def test_a_one_parameter_experiment_table_fits_160_columns(scratch):
    project, _, _ = scratch
    dvc(project, "exp", "run", "-S", "generate.max_new_tokens=2")
    env_cols = dict(os.environ, COLUMNS="400")
    r = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--only-changed", "--no-pager"], cwd=project, env=env_cols, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    widths = [len(line.rstrip()) for line in r.stdout.splitlines()]
    assert widths and max(widths) <= 160, r.stdout
    assert "max_new_tokens" in r.stdout


def cached_out_hashes(project: Path) -> dict[str, str]:
    """Each cached out of dvc.lock (those dvc.yaml does not mark ``cache: false``) with its md5."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    declared = [o for s in stages.values() for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])]
    uncached = {next(iter(o)) for o in declared if isinstance(o, dict) and not next(iter(o.values())).get("cache", True)}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", []) if o["path"] not in uncached}


@pytest.mark.slow
def test_a_fresh_run_writes_the_same_outputs_and_the_committed_lock_checks_out(scratch):
    """Every cached output is a function of its inputs: a second run from nothing (no DVC cache,
    no checkpoints) locks the same hashes, so `dvc checkout` of the committed lock finds them."""
    project, params, _ = scratch
    git(project, "checkout", "--", "dvc.lock", "params.yaml")
    committed = cached_out_hashes(project)
    assert "data/provenance/convert.json" in committed and "models/finetuned" in committed
    for path in (project / ".dvc" / "cache", Path(params["pretrain"]["checkpoint_dir"]), Path(params["finetune"]["checkpoint_dir"])):
        shutil.rmtree(path, ignore_errors=True)
    dvc(project, "repro", "-f")
    assert cached_out_hashes(project) == committed
    git(project, "checkout", "--", "dvc.lock", "params.yaml", "metrics")
    shutil.rmtree(project / "models" / "base")
    out = dvc(project, "checkout")
    assert "not in cache" not in out
    assert (project / "models" / "base" / "model.safetensors").exists()
