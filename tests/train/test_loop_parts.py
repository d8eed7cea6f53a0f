"""The training loop's parts on their own: the loop state, the RNG capture, the run id, the split loss."""

import dataclasses
import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import FinetuneParams, PretrainParams
from gptlab.rng import capture_rng, restore_rng, rng_from_json, rng_to_json
from gptlab.train.evaluate import split_loss
from gptlab.train.loop import publish
from gptlab.train.run import TrainResult, code_sha256, run_id
from gptlab.train.runtime import Distributed
from gptlab.train.state import LoopState


def test_loop_state_round_trips_through_state_json_with_the_keys_checkpoints_hold():
    s = LoopState(step=7, tokens_seen=896, best_val_loss=1.5, history=[{"step": 4, "val_loss": 1.5}], train_seconds=2.5, pending_tokens_per_s=10.0,
                  train_log=[{"step": 5, "running_loss": 1.7, "lr": 0.1, "grad_norm": 0.5}], running={"loss": 3.5, "grad_norm": 1.0, "steps": 2, "norms": 2})  # fmt: skip
    saved = s.to_json("abc", {"pos": 3}, pending=True)
    assert list(saved) == [
        "step",
        "tokens_seen",
        "best_val_loss",
        "history",
        "data_rng",
        "run_id",
        "train_seconds",
        "train_log",
        "running",
        "pending_tokens_per_s",
    ]
    assert LoopState.from_json(json.loads(json.dumps(saved))) == s
    assert "pending_tokens_per_s" not in s.to_json("abc", None, pending=False)
    old = {"step": 3, "tokens_seen": 1, "best_val_loss": float("inf"), "history": []}  # written before train_seconds existed
    assert LoopState.from_json(old) == LoopState(step=3, tokens_seen=1)
    assert s.evaluated(4) and not s.evaluated(7) and not LoopState().evaluated(0)


def test_rng_capture_restores_torch_and_python_draws_also_through_json():
    tensors, meta = capture_rng()
    first = (torch.rand(3), random.random())
    restore_rng(tensors, meta)
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1]
    restore_rng(rng_from_json(json.loads(json.dumps(rng_to_json(tensors)))), json.loads(json.dumps(meta)))
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1]


def test_run_ids_are_the_hashes_existing_checkpoint_folders_are_named_by():
    def legacy(blob: dict) -> str:
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]

    p = PretrainParams(max_steps=9)
    keep = {
        k: v
        for k, v in dataclasses.asdict(p).items()
        if k
        not in ("checkpoint_dir", "resume", "device", "sample_prompt", "sample_tokens", "keep_runs", "parallel", "activation_checkpointing", "log_interval")
    }
    model = GPTConfig(vocab_size=16, context_length=8, emb_dim=8, n_heads=2, n_layers=1).to_dict()
    assert run_id("pretrain", p, model=model, seed=1, data={"shards": {}}) == legacy({"model": model, "pretrain": keep, "seed": 1, "data": {"shards": {}}})
    f = FinetuneParams(checkpoint_dir="elsewhere", device="cpu")
    keep = {
        k: v
        for k, v in dataclasses.asdict(f).items()
        if k not in ("checkpoint_dir", "resume", "device", "keep_runs", "parallel", "activation_checkpointing", "log_interval")
    }
    assert run_id("finetune", f, base="b", seed=0, data="d", val="v") == legacy({"base": "b", "finetune": keep, "seed": 0, "data": "d", "val": "v"})
    assert run_id("finetune", f, base="b", seed=0, data="d") == run_id("finetune", FinetuneParams(), base="b", seed=0, data="d")  # where, not what


def test_a_run_id_changes_with_the_training_code_so_an_older_loops_checkpoint_is_not_resumed(tmp_path):
    import gptlab

    src = tmp_path / "src"
    shutil.copytree(Path(gptlab.__file__).parent, src / "gptlab", ignore=shutil.ignore_patterns("__pycache__"))

    def shas() -> list[str]:
        code = "from gptlab.train.run import code_sha256; print(code_sha256('gptlab.train.pretrain'), code_sha256('gptlab.train.finetune'))"
        out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True)
        return out.stdout.split()

    before = shas()
    assert before == [code_sha256("gptlab.train.pretrain"), code_sha256("gptlab.train.finetune")]  # a copy hashes as the package does
    assert before[0] != before[1]
    (src / "gptlab/serve/__init__.py").write_text((src / "gptlab/serve/__init__.py").read_text() + "\n# not imported by training\n")
    assert shas() == before
    loop = src / "gptlab/train/loop.py"
    loop.write_text(loop.read_text() + "\n# an edit to the loop\n")
    assert shas()[0] != before[0] and shas()[1] != before[1]
    with pytest.raises(GptlabError, match="no module 'gptlab.train.nothing'"):
        code_sha256("gptlab.train.nothing")


def test_split_loss_weights_each_batch_and_skips_empty_ones():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, context_length=8, emb_dim=8, n_heads=2, n_layers=1)).train()
    a, b = torch.randint(0, 16, (2, 9)), torch.randint(0, 16, (1, 9))
    with torch.no_grad():
        la, lb = model.eval()(a[:, :-1], a[:, 1:])[1].item(), model(b[:, :-1], b[:, 1:])[1].item()
    model.train()
    batches = [(a[:, :-1], a[:, 1:], 3), (b[:, :-1], b[:, 1:], 1), (b[:, :-1], b[:, 1:], 0)]
    assert split_loss(model, batches, torch.device("cpu")) == pytest.approx((3 * la + lb) / 4)
    assert model.training  # put back in its former mode
    with pytest.raises(GptlabError, match="raise the limit"):
        split_loss(model, [(b[:, :-1], b[:, 1:], 0)], torch.device("cpu"), empty="nothing to score; raise the limit")


def test_only_rank_0_publishes(tmp_path):
    assert publish(TrainResult({}, tmp_path / "latest", None, Distributed(rank=1, world=2)), tmp_path / "out") is False
    assert not (tmp_path / "out").exists()
