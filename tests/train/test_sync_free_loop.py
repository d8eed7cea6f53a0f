"""The loop that does not stall an accelerator (issue 25.3), exercised on the CPU: the loss read
only every few steps still stops a non-finite run naming the step and never saves it; reading
less often changes no number; compile: auto; the compile warm-up is timed apart."""

import json
import time

import pytest
import torch

from gptlab.errors import GptlabError, ParamsError
from gptlab.model import GPT
from gptlab.params import PretrainParams
from gptlab.params.loader import from_dict
from gptlab.train import loop
from gptlab.train.pretrain import pretrain
from tests.train.test_train import params, poison_from, tiny_config, weights


def test_deferred_finite_check_names_the_step_and_saves_nothing_poisoned(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "sync_interval", lambda device: 3)
    poison_from(monkeypatch, 7)  # 2 micro-batches per step: step 3 (0-based) is the first bad one, read at step 5
    with pytest.raises(GptlabError, match=r"step 3: training loss is nan; stopped. The last good checkpoint is none yet"):
        pretrain(tiny_config(shards), params(tmp_path, eval_interval=8), shards, seed=0)
    assert not list((tmp_path / "ckpt").glob("*/latest"))


def test_reading_the_loss_less_often_changes_no_number(shards, tmp_path, monkeypatch):
    every = pretrain(tiny_config(shards), params(tmp_path / "a"), shards, seed=0)
    monkeypatch.setattr(loop, "sync_interval", lambda device: 5)
    seldom = pretrain(tiny_config(shards), params(tmp_path / "b"), shards, seed=0)
    a, b = weights(every.latest), weights(seldom.latest)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert every.summary["val_loss"] == seldom.summary["val_loss"]


def test_compile_auto_is_on_for_cuda_only():
    assert loop.compile_enabled("auto", torch.device("cuda")) and not loop.compile_enabled("auto", torch.device("cpu"))
    assert loop.compile_enabled(True, torch.device("cpu")) and not loop.compile_enabled(False, torch.device("cuda"))
    assert PretrainParams().compile == "auto"
    assert from_dict(PretrainParams, {"compile": True}).compile is True
    with pytest.raises(ParamsError, match="compile"):
        from_dict(PretrainParams, {"compile": "yes"})


def test_compile_warmup_is_timed_apart(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model: model)  # the first step stands in for a compile
    skew = {"seconds": 0.0}  # the loop's clock jumps 1000 s during the first forward: a slow compile, whatever the machine's load

    class Clock:
        @staticmethod
        def perf_counter():
            return time.perf_counter() + skew["seconds"]

    monkeypatch.setattr(loop, "time", Clock)
    original, calls = GPT.forward, {"n": 0}

    def slow_first(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            skew["seconds"] += 1000.0
        return original(self, *a, **kw)

    monkeypatch.setattr(GPT, "forward", slow_first)
    result = pretrain(tiny_config(shards), params(tmp_path, compile=True), shards, seed=0, live_dir=tmp_path / "live")
    s = result.summary
    assert s["compile_seconds"] >= 1000 and s["train_seconds"] < 1000  # the warm-up is in the one, not the other
    assert "compile_seconds" in json.loads((tmp_path / "live" / "summary.json").read_text())
    assert "compile_seconds" not in json.loads((tmp_path / "live" / "metrics.json").read_text())


def test_device_batches_on_the_cpu_are_the_batches():
    batches = [(torch.arange(6).view(2, 3), torch.arange(6).view(2, 3) + 1) for _ in range(3)]
    moved = list(loop.device_batches(iter(batches), torch.device("cpu")))
    assert len(moved) == 3 and all(torch.equal(x, bx) and torch.equal(y, by) for (x, y), (bx, by) in zip(moved, batches))
