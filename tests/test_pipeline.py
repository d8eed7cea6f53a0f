"""`dvc repro` on a scratch copy of the project with local sources: run, no-op, partial rerun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dvc(cwd, *args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
def test_dvc_repro_runs_caches_and_reruns_only_what_changed(tmp_path, corpus_dir):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    archive = shutil.make_archive(str(tmp_path / "corpus-1.0"), "gztar", root_dir=tmp_path, base_dir="corpus")
    records = [{"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else f"{i}", "output": f"{i}"} for i in range(20)]
    (tmp_path / "records.json").write_text(json.dumps(records))
    params["download"]["sources"] = {"corpus": {"uri": Path(archive).as_uri() + "#*.txt"}, "instructions": {"uri": (tmp_path / "records.json").as_uri()}}
    params["download"]["cache_dir"] = str(tmp_path / "cache")
    params["model"] = {"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1}
    params["pretrain"].update(max_steps=4, batch_size=2, tokens_per_step=64, warmup_steps=1, eval_interval=2, eval_windows=2,
                              sample_tokens=4, checkpoint_dir=str(tmp_path / "ckpt"))  # fmt: skip
    params["finetune"].update(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=2, checkpoint_dir=str(tmp_path / "ft-ckpt"))
    params["generate"].update(max_new_tokens=4, batch_size=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    # a clone has commits; DVCLive refuses a git repository without any
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "scratch"], cwd=project, check=True)

    out = dvc(project, "repro")
    assert "Running stage 'download'" in out and "Running stage 'tokenize'" in out and "Running stage 'pretrain'" in out
    assert sorted(p.name for p in (project / "data" / "shards").iterdir()) == ["meta.json", "train-00000.bin", "val-00000.bin"]
    assert (project / "metrics" / "download.json").exists() and (project / "metrics" / "tokenize.json").exists()
    assert sorted(p.name for p in (project / "models" / "pretrained").iterdir()) == ["best", "config.json", "model.safetensors"]
    assert sorted(p.name for p in (project / "data" / "instructions").iterdir()) == ["test.json", "train.json", "val.json"]
    assert json.loads((project / "metrics" / "convert.json").read_text())["source"] == "pretrained"
    assert sorted(p.name for p in (project / "models" / "finetuned").iterdir()) == ["adapter", "config.json", "model.safetensors"]
    responses = json.loads((project / "data" / "responses.json").read_text())
    assert len(responses) == 2 and set(responses[0]) == {"instruction", "input", "output", "response"}
    score = json.loads((project / "metrics" / "score.json").read_text())
    assert score["gptlab"]["records"] == 2 and score["judge"] == {"api": "none"} and "litgpt" not in score
    assert json.loads((project / "data" / "responses_litgpt.json").read_text()) == []  # the litgpt track is off
    assert (project / "data" / "scores.csv").read_text().count("\n") == 3
    shown = dvc(project, "metrics", "show")
    assert "metrics/pretrain/metrics.json" in shown and "val_loss" in shown and "base_val_loss" in shown and "token_f1" in shown

    assert "Data and pipelines are up to date" in dvc(project, "repro")

    params["generate"]["max_new_tokens"] = 3  # only the responses change
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, "repro")
    assert "Running stage 'generate'" in out and "Running stage 'score'" in out
    assert "Running stage 'finetune'" not in out and "Running stage 'pretrain'" not in out

    assert "Data and pipelines are up to date" in dvc(project, "repro")

    params["tokenize"]["val_fraction"] = 0.4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(project, "repro")
    assert "Stage 'download' didn't change, skipping" in out and "Running stage 'tokenize'" in out
    assert "Running stage 'pretrain'" in out  # new shards: retrained
    assert '"val": 2' in (project / "metrics" / "tokenize.json").read_text()
