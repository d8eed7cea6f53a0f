"""FSDP2 (``parallel: fsdp``), sharded DCP checkpoints across process counts, and activation
checkpointing: the numbers must match plain single-process training."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import PretrainParams
from gptlab.train.parallel import apply_activation_checkpointing
from gptlab.train.pretrain import pretrain
from tests.helpers.shards import word_shards

HELPER = Path(__file__).with_name("parallel_run.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return word_shards(tmp_path_factory.mktemp("parallel"), docs=4, lines=3)


def tiny(shards) -> GPTConfig:
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    return GPTConfig(vocab_size=vocab, context_length=16, emb_dim=16, n_heads=2, n_layers=2)


def params(folder: Path, **kw) -> PretrainParams:
    base = dict(max_steps=4, batch_size=2, tokens_per_step=128, lr=1e-2, min_lr=1e-3, warmup_steps=1, eval_interval=2,
                eval_windows=4, precision="fp32", device="cpu", sample_tokens=4, checkpoint_dir=str(folder / "ckpt"))  # fmt: skip
    return PretrainParams(**{**base, **kw})


def torchrun(folder: Path, shards: Path, p: PretrainParams, stop_after_steps: int | None = None) -> str:
    """Run pretraining under torchrun with 2 CPU processes (gloo); return its output."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"model": tiny(shards).to_dict(), "params": dataclasses.asdict(p), "shards": str(shards), "seed": 1, "stop_after_steps": stop_after_steps}
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HELPER), str(folder / "spec.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=folder)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def weights(latest: Path) -> dict[str, torch.Tensor]:
    return load_file(latest / "model.safetensors")


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=40, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.1))
    checkpointed = apply_activation_checkpointing(GPT(plain.config))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randint(0, 40, (3, 16))
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks: recomputation replays the RNG
        _, loss = model(x, x)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    grads = dict(checkpointed.named_parameters())
    for name, q in plain.named_parameters():
        assert torch.allclose(q.grad, grads[name].grad, atol=1e-6, rtol=0), name
    checkpointed.eval()  # evaluation and generation take the plain path
    with torch.no_grad():
        assert torch.equal(checkpointed(x)[0], plain.eval()(x)[0])


def test_activation_checkpointing_and_fsdp_on_one_process_train_like_the_default(shards, tmp_path):
    plain = pretrain(tiny(shards), params(tmp_path / "a"), shards, seed=1)
    other = pretrain(tiny(shards), params(tmp_path / "b", activation_checkpointing=True, parallel="fsdp"), shards, seed=1)
    assert other.summary["processes"] == 1 and "parallel" not in other.summary
    assert_close(weights(plain.latest), weights(other.latest), atol=1e-6)
    assert not (other.latest / "dcp").exists()


def test_unknown_parallel_mode_names_the_choices():
    with pytest.raises(GptlabError, match="parallel='zero'.*ddp.*fsdp"):
        PretrainParams(parallel="zero")


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process(shards, tmp_path):
    one = pretrain(tiny(shards), params(tmp_path / "one"), shards, seed=1)
    torchrun(tmp_path / "two", shards, params(tmp_path / "two", parallel="fsdp", activation_checkpointing=True))
    latest = one.latest.parent.parent.parent.parent / "two" / "ckpt" / one.latest.parent.name / "latest"
    assert sorted(f.name for f in (latest / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert_close(weights(one.latest), weights(latest))
    for name in ("best",):  # best/ is a plain, full checkpoint too
        assert_close(weights(one.latest.parent / name), weights(latest.parent / name))
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == 4 and [r["step"] for r in state["history"]] == [0, 2, 4]
    # the running loss (averaged over the ranks: the global batch's) and the gradient norm are one process's
    (logged,) = state["train_log"]
    (alone,) = json.loads((one.latest / "state.json").read_text())["train_log"]
    assert logged["step"] == alone["step"] == 4 and logged["lr"] == alone["lr"]
    assert logged["running_loss"] == pytest.approx(alone["running_loss"], abs=1e-4) and logged["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-3)


@pytest.mark.slow
def test_sharded_checkpoint_of_two_processes_resumes_in_one_and_back(shards, tmp_path, capsys):
    straight = pretrain(tiny(shards), params(tmp_path / "straight"), shards, seed=1)
    # 2 (fsdp) -> 1
    torchrun(tmp_path / "a", shards, params(tmp_path / "a", parallel="fsdp"), stop_after_steps=2)
    capsys.readouterr()
    resumed = pretrain(tiny(shards), params(tmp_path / "a"), shards, seed=1)
    assert "at step 2/4" in capsys.readouterr().out and resumed.summary["processes"] == 1
    assert_close(weights(straight.latest), weights(resumed.latest))
    # 1 -> 2 (fsdp) -> 1: a plain checkpoint resumes sharded, and the sharded one plainly
    pretrain(tiny(shards), params(tmp_path / "b"), shards, seed=1, stop_after_steps=1)
    assert "at step 1/4" in torchrun(tmp_path / "b", shards, params(tmp_path / "b", parallel="fsdp"), stop_after_steps=2)
    assert (tmp_path / "b" / "ckpt" / straight.latest.parent.name / "latest" / "dcp" / ".metadata").exists()
    capsys.readouterr()
    resumed = pretrain(tiny(shards), params(tmp_path / "b", parallel="fsdp"), shards, seed=1)
    assert "at step 3/4" in capsys.readouterr().out
    assert_close(weights(straight.latest), weights(resumed.latest))
    # 1 -> 2 (fsdp) to the end
    pretrain(tiny(shards), params(tmp_path / "c"), shards, seed=1, stop_after_steps=3)
    assert "at step 3/4" in torchrun(tmp_path / "c", shards, params(tmp_path / "c", parallel="fsdp"))
    assert_close(weights(straight.latest), weights(tmp_path / "c" / "ckpt" / straight.latest.parent.name / "latest"))


@pytest.mark.slow
def test_lora_finetune_under_fsdp_matches_one_process_and_publishes_a_plain_model(tmp_path):
    from gptlab.checkpoint import load_model, model_state, save_model
    from gptlab.data.instructions import write_splits
    from gptlab.params import FinetuneParams, LoraParams
    from gptlab.train.finetune import finetune

    records = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("red", "green", "blue", "cat", "dog", "sun")]
    torch.manual_seed(0)
    save_model(tmp_path / "base", GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2, n_layers=2)))
    write_splits({"train": records, "val": records[:2], "test": records[2:]}, tmp_path / "splits")
    base = dict(max_steps=4, lr=1e-2, min_lr=1e-3, warmup_steps=1, eval_interval=2, batch_size=2, device="cpu", precision="fp32")
    one = finetune(tmp_path / "base", tmp_path / "splits" / "train.json", tmp_path / "splits" / "val.json",
                   FinetuneParams(**base, grad_accum=2, checkpoint_dir=str(tmp_path / "one"), lora=LoraParams(r=2, alpha=4, dropout=0.0)), seed=0)  # fmt: skip
    p = FinetuneParams(**base, grad_accum=1, parallel="fsdp", activation_checkpointing=True, checkpoint_dir=str(tmp_path / "two"))
    spec = {"kind": "finetune", "base": str(tmp_path / "base"), "train": str(tmp_path / "splits" / "train.json"), "val": str(tmp_path / "splits" / "val.json"),
            "params": {**dataclasses.asdict(p), "lora": {"r": 2, "alpha": 4, "dropout": 0.0}}, "seed": 0, "out": str(tmp_path / "finetuned")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HELPER), str(tmp_path / "spec.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two_latest = next((tmp_path / "two").glob("*/latest"))
    assert (two_latest / "dcp" / ".metadata").exists()
    assert (one.train.latest / "trainable.safetensors").exists()  # one process: a lean LoRA checkpoint (the adapter only)
    assert_close(model_state(one.model), weights(two_latest))
    merged, _ = load_model(tmp_path / "finetuned")  # the published model is plain and complete
    assert (tmp_path / "finetuned" / "adapter").is_dir() and merged.config.emb_dim == 16
