"""Interruptions of the training loop: signals, kills mid-write, evaluations cut short, resume keys."""

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

import gptlab.io
import gptlab.train.pretrain as pretrain_module
from gptlab.data.shards import data_checksum, read_shard, write_shard
from gptlab.io import atomic_dir, recover_dir
from gptlab.model import GPT
from gptlab.train.pretrain import pretrain
from tests.helpers.faults import random_faults, run_dir, run_stage, stage_spec, tree_sha256
from tests.train.test_train import params, tiny_config, weights


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def state(latest) -> dict:
    return json.loads((latest / "state.json").read_text())


def test_sigint_mid_step_finishes_the_step_saves_it_and_resumes_bit_exact(shards, tmp_path, monkeypatch):
    cfg = tiny_config(shards)
    straight = pretrain(cfg, params(tmp_path / "a", eval_interval=3), shards, seed=4)
    original, calls = GPT.forward, {"n": 0}

    def forward(self, idx, targets=None, **kw):
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == 9:  # 2 micro-batches a step: the first one of step 5 (0-based 4)
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", forward)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even under `nohup ... &`
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, params(tmp_path / "b", eval_interval=3), shards, seed=4)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    finally:
        signal.signal(signal.SIGINT, previous)
    latest = next((tmp_path / "b" / "ckpt").iterdir()) / "latest"
    assert state(latest)["step"] == 5  # the step the signal fell in was completed, then saved
    monkeypatch.setattr(GPT, "forward", original)
    resumed = pretrain(cfg, params(tmp_path / "b", eval_interval=3), shards, seed=4)
    assert same_weights(straight.latest, resumed.latest)
    assert [r["step"] for r in state(resumed.latest)["history"]] == [0, 3, 6, 8]


def test_hard_interrupt_during_the_last_evaluation_is_redone_on_resume(shards, tmp_path, monkeypatch):
    cfg = tiny_config(shards)
    straight = pretrain(cfg, params(tmp_path / "a"), shards, seed=2, live_dir=tmp_path / "a" / "live")
    original, calls = pretrain_module.split_loss, {"n": 0}

    def split_loss(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # evaluations call it twice (val, train): steps 0, 4, then the one of step 8
            raise KeyboardInterrupt  # a second Ctrl-C in the middle of the evaluation
        return original(*args, **kw)

    monkeypatch.setattr(pretrain_module, "split_loss", split_loss)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, params(tmp_path / "b"), shards, seed=2, live_dir=tmp_path / "b" / "live")
    monkeypatch.setattr(pretrain_module, "split_loss", original)
    resumed = pretrain(cfg, params(tmp_path / "b"), shards, seed=2, live_dir=tmp_path / "b" / "live")
    s = state(resumed.latest)
    assert [r["step"] for r in s["history"]] == [0, 4, 8]
    assert resumed.summary["val_loss"] == straight.summary["val_loss"] and resumed.summary["best_val_loss"] == straight.summary["best_val_loss"]
    best = json.loads((resumed.best / "config.json").read_text())["pretrain"]
    assert best["val_loss"] == s["best_val_loss"] == straight.summary["best_val_loss"]
    metrics = {n: json.loads((tmp_path / n / "live" / "metrics.json").read_text()) for n in "ab"}
    assert metrics["b"]["val_loss"] == metrics["a"]["val_loss"] == s["history"][-1]["val_loss"]
    assert same_weights(straight.best, resumed.best) and same_weights(straight.latest, resumed.latest)


def test_a_signal_during_an_evaluation_lets_it_finish(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(gptlab.io, "_FAULT_COUNTS", {})  # counted from this run on
    monkeypatch.setenv("GPTLAB_FAULT", "eval#2=TERM")  # the evaluation of step 4 (the first is step 0's)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(shards), params(tmp_path), shards, seed=1)
    latest = next((tmp_path / "ckpt").iterdir()) / "latest"
    s = state(latest)
    assert s["step"] == 4 and [r["step"] for r in s["history"]] == [0, 4] and "pending_tokens_per_s" not in s
    best = json.loads((latest.parent / "best" / "config.json").read_text())["pretrain"]
    assert best == {"step": 4, "val_loss": s["best_val_loss"]}


def test_recover_dir_restores_a_folder_lost_between_the_two_renames(tmp_path):
    (tmp_path / ".old-latest-999999999").mkdir()  # a dead writer's old copy; no latest/
    (tmp_path / ".old-latest-999999999" / "state.json").write_text("{}")
    (tmp_path / ".tmp-latest-999999999-ab12cd").mkdir()  # its half-written new copy
    (tmp_path / ".tmp-latest-k3j4h5g6").mkdir()  # as named before pids were recorded
    (tmp_path / ".tmp-latest-other-1").mkdir()  # another target's: not ours
    recover_dir(tmp_path / "latest")
    assert (tmp_path / "latest" / "state.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-latest-other-1", "latest"]
    with atomic_dir(tmp_path / "best") as tmp:  # a live writer's own temp folder is kept until done
        recover_dir(tmp_path / "best")
        assert tmp.exists()


def test_different_shards_with_the_same_token_count_do_not_resume_each_other(shards, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    meta = json.loads((other / "meta.json").read_text())
    name = sorted(p.name for p in other.glob("train-*.bin"))[0]
    tokens = np.ascontiguousarray(read_shard(other / name)[::-1])
    write_shard(other / name, tokens, meta["vocab_size"], int(tokens.max()))
    if name in meta.get("files", {}):
        meta["files"][name]["crc32"] = data_checksum(tokens)
        (other / "meta.json").write_text(json.dumps(meta))
    cfg = tiny_config(shards)
    pretrain(cfg, params(tmp_path), shards, seed=0, stop_after_steps=2)
    capsys.readouterr()
    result = pretrain(cfg, params(tmp_path), other, seed=0, stop_after_steps=2)
    assert "resuming" not in capsys.readouterr().out and result.summary["steps"] == 2
    assert len([p for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith(".")]) == 2


PRETRAIN = dict(max_steps=30, batch_size=4, tokens_per_step=128, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=5,
                eval_windows=4, precision="fp32", device="cpu", sample_tokens=4, sample_prompt="ROMEO:")  # fmt: skip


@pytest.fixture(scope="module")
def straight_pretrain(shards, tmp_path_factory):
    """One uninterrupted 30-step run, run in a subprocess like the interrupted ones."""
    root = tmp_path_factory.mktemp("straight")
    spec = stage_spec(root, "pretrain", PRETRAIN, shards, seed=7, model=tiny_config(shards).to_dict())
    r = run_stage(spec)
    assert r.returncode == 0, r.stderr[-3000:]
    return spec, {"out": tree_sha256(root / "out"), "latest": tree_sha256(run_dir(spec) / "latest")}


def interrupted(shards, tmp_path) -> dict:
    return stage_spec(tmp_path, "pretrain", PRETRAIN, shards, seed=7, model=tiny_config(shards).to_dict())


@pytest.mark.slow
def test_sigterm_at_step_13_then_sigint_at_step_24_give_the_uninterrupted_weights(shards, tmp_path, straight_pretrain):
    """The measurement of issue 12: gpt-tiny-like, 30 steps, eval every 5, TERM at 13, INT at 24."""
    spec = interrupted(shards, tmp_path)
    first = run_stage(spec, "mid_step#13=TERM")
    assert first.returncode == 130 and state(run_dir(spec) / "latest")["step"] == 13, first.stderr[-2000:]
    second = run_stage(spec, "mid_step#11=INT")
    assert second.returncode == 130 and state(run_dir(spec) / "latest")["step"] == 24, second.stderr[-2000:]
    assert run_stage(spec).returncode == 0
    assert {"out": tree_sha256(tmp_path / "out"), "latest": tree_sha256(run_dir(spec) / "latest")} == straight_pretrain[1]


@pytest.mark.slow
def test_kill_9_while_writing_or_swapping_a_checkpoint_resumes_bit_identical(shards, tmp_path, straight_pretrain):
    spec = interrupted(shards, tmp_path)
    assert run_stage(spec, "atomic_dir:latest#3").returncode == -9  # step 15 written, not renamed
    folder = run_dir(spec)
    assert list(folder.glob(".tmp-latest-*")) and state(folder / "latest")["step"] == 10
    assert run_stage(spec, "atomic_swap:latest#2").returncode == -9  # step 20: latest/ renamed away, new one not in
    assert not (folder / "latest").exists() and list(folder.glob(".old-latest-*"))
    last = run_stage(spec)
    assert last.returncode == 0 and "resuming run" in last.stdout and "at step 15/30" in last.stdout, last.stdout + last.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["best", "latest"]  # no leftovers
    assert {"out": tree_sha256(tmp_path / "out"), "latest": tree_sha256(folder / "latest")} == straight_pretrain[1]


@pytest.mark.slow
def test_random_faults_resume_bit_identical(shards, tmp_path, straight_pretrain):
    spec = interrupted(shards, tmp_path)
    for fault in random_faults(0, 30, n=3):
        r = run_stage(spec, fault)
        assert r.returncode in (-9, 130), f"{fault}: {r.returncode} {r.stderr[-2000:]}"
    assert run_stage(spec).returncode == 0
    assert {"out": tree_sha256(tmp_path / "out"), "latest": tree_sha256(run_dir(spec) / "latest")} == straight_pretrain[1]


def test_an_ignored_sigint_stays_ignored(shards, tmp_path):
    """Under `nohup ... &` SIGINT is ignored: training must not start answering it."""
    from gptlab.train.runtime import StopRequest

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum is None
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # SIGTERM is still caught
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_during_the_step_0_evaluation_saves_it_and_the_resumed_run_logs_it_once(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(gptlab.io, "_FAULT_COUNTS", {})  # counted from this run on
    monkeypatch.setenv("GPTLAB_FAULT", "eval#1=TERM")
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(shards), params(tmp_path), shards, seed=1, live_dir=tmp_path / "live")
    latest = next((tmp_path / "ckpt").iterdir()) / "latest"
    assert state(latest)["step"] == 0 and [r["step"] for r in state(latest)["history"]] == [0]
    monkeypatch.delenv("GPTLAB_FAULT")
    resumed = pretrain(tiny_config(shards), params(tmp_path), shards, seed=1, live_dir=tmp_path / "live")
    assert [r["step"] for r in state(resumed.latest)["history"]] == [0, 4, 8]
    val_tsv = (tmp_path / "live" / "plots" / "metrics" / "val_loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in val_tsv[1:]] == ["0", "4", "8"]
