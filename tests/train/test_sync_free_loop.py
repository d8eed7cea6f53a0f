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
        calls["n"] += self.training  # the first training forward (step 0's evaluation runs before it, in eval mode)
        if calls["n"] == 1 and self.training:
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


def test_the_running_curves_read_the_device_only_at_log_points(shards, tmp_path, monkeypatch):
    # as on an accelerator: the loss is left on the device (sync_interval 100); host reads (.item, .tolist) are counted per step
    monkeypatch.setattr(loop, "sync_interval", lambda device: 100)
    reads = {"n": 0}
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            reads["n"] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_step, per_log = {}, {}
    step, log_point = loop.Trainer.train_step, loop.Trainer.log_point

    def counted_step(self):
        before = reads["n"]
        out = step(self)
        per_step[self.state.step + 1] = reads["n"] - before
        return out

    def counted_log(self):
        before = reads["n"]
        log_point(self)
        per_log[self.state.step] = reads["n"] - before

    adamw_step, in_optimizer = torch.optim.AdamW.step, {"n": 0}

    def uncounted_adamw(self, *a, **kw):  # AdamW reads its per-parameter step counters: host tensors, even on an accelerator
        before = reads["n"]
        out = adamw_step(self, *a, **kw)
        in_optimizer["n"] += reads["n"] - before
        reads["n"] = before
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", uncounted_adamw)
    monkeypatch.setattr(loop.Trainer, "train_step", counted_step)
    monkeypatch.setattr(loop.Trainer, "log_point", counted_log)
    pretrain(tiny_config(shards), params(tmp_path, max_steps=12, eval_interval=12, log_interval=4), shards, seed=0, live_dir=tmp_path / "live")
    assert in_optimizer["n"] > 0  # the optimizer's own reads were set apart
    assert per_step == {**{s: 0 for s in range(1, 12)}, 12: 1}  # no read in a step, but the last (the pending losses, before its evaluation)
    assert per_log == {4: 1, 8: 1, 12: 1}  # one read per log point
    lines = (tmp_path / "live" / "plots" / "metrics" / "running_loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["4", "8", "12"]
