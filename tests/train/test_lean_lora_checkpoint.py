"""A LoRA run's checkpoints hold the trained tensors, the optimizer state and the base's hash, not
the model; queued and --temp experiments (DVC runs them in a temporary copy of the project, with
DVC_ROOT naming the project) keep their checkpoints in the project's folder, so they resume."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlab.checkpoint import TRAINABLE_WEIGHTS, save_model
from gptlab.config import GPTConfig
from gptlab.data.instructions import write_splits
from gptlab.errors import GptlabError
from gptlab.lora import lora_state, model_hash
from gptlab.model import GPT
from gptlab.params import FinetuneParams, LoraParams
from gptlab.train.finetune import finetune, publish_finetuned
from gptlab.train.run import checkpoint_root
from tests.helpers.records import INSTRUCTIONS


@pytest.fixture(scope="module")
def base_and_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    torch.manual_seed(0)
    save_model(root / "base", GPT(GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2)))
    write_splits({"train": INSTRUCTIONS, "val": INSTRUCTIONS[:2], "test": INSTRUCTIONS[2:4]}, root / "splits")
    return root / "base", root / "splits"


def params(tmp_path, **overrides) -> FinetuneParams:
    base = dict(max_steps=6, lr=1e-2, min_lr=1e-3, warmup_steps=2, weight_decay=0.0, eval_interval=3, batch_size=3, device="cpu", precision="fp32")
    base.update(checkpoint_dir=str(tmp_path / "ckpt"), lora=LoraParams(r=4, alpha=8, dropout=0.0))
    return FinetuneParams(**{**base, **overrides})


def run(base_and_splits, p, **kwargs):
    base_dir, splits = base_and_splits
    return finetune(base_dir, splits / "train.json", splits / "val.json", p, seed=1, **kwargs)


def folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_a_lora_checkpoint_holds_the_adapter_the_optimizer_and_the_base_hash(base_and_splits, tmp_path):
    base_dir, _ = base_and_splits
    result = run(base_and_splits, params(tmp_path))
    latest, best = result.train.latest, result.train.best
    assert not (latest / "model.safetensors").exists() and not (best / "model.safetensors").exists()
    assert {"state.safetensors", "state.json", TRAINABLE_WEIGHTS, "config.json"} <= {f.name for f in latest.iterdir()}
    assert not (best / "state.safetensors").exists()  # best/: the adapter alone
    adapter = lora_state(result.model)
    assert set(load_file(latest / TRAINABLE_WEIGHTS)) == set(adapter) == set(load_file(best / TRAINABLE_WEIGHTS))
    for name, tensor in load_file(latest / TRAINABLE_WEIGHTS).items():
        assert torch.equal(tensor, adapter[name]), name
    assert json.loads((latest / "config.json").read_text())["finetune"]["base_sha256"] == model_hash(base_dir)
    # the run folder is a fraction of one copy of the base model (it held two full copies before)
    assert folder_bytes(latest.parent) < (base_dir / "model.safetensors").stat().st_size / 4


def test_a_full_finetune_keeps_full_checkpoints(base_and_splits, tmp_path):
    result = run(base_and_splits, params(tmp_path, method="full", max_steps=3))
    assert (result.train.latest / "model.safetensors").exists() and not (result.train.latest / TRAINABLE_WEIGHTS).exists()


def test_a_resumed_lora_run_publishes_the_same_bytes(base_and_splits, tmp_path):
    straight = run(base_and_splits, params(tmp_path / "a"))
    p = params(tmp_path / "b")
    run(base_and_splits, p, stop_after_steps=3)
    resumed = run(base_and_splits, p)
    a, b = publish_finetuned(straight, tmp_path / "pa"), publish_finetuned(resumed, tmp_path / "pb")
    for name in ("model.safetensors", "config.json", "adapter/adapter.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_checkpoint_of_another_base_is_refused(base_and_splits, tmp_path):
    p = params(tmp_path)
    first = run(base_and_splits, p, stop_after_steps=3)
    config = first.train.latest / "config.json"
    data = json.loads(config.read_text())
    data["finetune"]["base_sha256"] = "0" * 64
    config.write_text(json.dumps(data))
    with pytest.raises(GptlabError, match="trained on base 0000000000000000"):
        run(base_and_splits, p)


def test_a_relative_checkpoint_dir_is_the_projects_under_dvc(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert checkpoint_root("checkpoints/finetune") == Path("checkpoints/finetune")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert checkpoint_root("checkpoints/finetune") == tmp_path / "project" / "checkpoints" / "finetune"
    assert checkpoint_root(tmp_path / "abs") == tmp_path / "abs"


def test_an_interrupted_run_in_a_temporary_workspace_resumes_from_the_projects_checkpoints(base_and_splits, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    monkeypatch.setenv("DVC_ROOT", str(project))
    p = params(tmp_path, checkpoint_dir="checkpoints/finetune")
    for workspace in ("exp-a", "exp-b"):  # DVC gives each attempt a fresh temporary copy
        (tmp_path / workspace).mkdir()
        monkeypatch.chdir(tmp_path / workspace)
        result = run(base_and_splits, p, **({"stop_after_steps": 3} if workspace == "exp-a" else {}))
    assert "resuming run" in capsys.readouterr().out
    assert result.train.latest.is_relative_to(project / "checkpoints" / "finetune")
    assert not (tmp_path / "exp-b" / "checkpoints").exists()
