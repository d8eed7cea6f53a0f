import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import PretrainParams
from gptlab.train.loop import publish
from gptlab.train.optim import lr_at, make_optimizer
from gptlab.train.pretrain import pretrain


def tiny_config(shards) -> GPTConfig:
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    return GPTConfig(vocab_size=vocab, context_length=16, emb_dim=32, n_heads=4, n_layers=2)


def params(tmp_path, **kw) -> PretrainParams:
    base = dict(max_steps=8, batch_size=4, tokens_per_step=128, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                eval_interval=4, eval_windows=8, precision="fp32", device="cpu", sample_tokens=8,
                sample_prompt="ROMEO:", checkpoint_dir=str(tmp_path / "ckpt"))  # fmt: skip
    return PretrainParams(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    p = PretrainParams(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, p) == pytest.approx(0.1) and lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(10, p) == pytest.approx(1.0)
    assert lr_at(55, p) == pytest.approx(0.55)
    assert lr_at(100, p) == pytest.approx(0.1) and lr_at(500, p) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    opt = make_optimizer(model, PretrainParams(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(q.dim() == 2 for q in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(q.dim() == 1 for q in no_decay["params"])
    assert sum(q.numel() for g in opt.param_groups for q in g["params"]) == model.num_parameters()


def test_training_lowers_the_loss_and_writes_everything(shards, tmp_path):
    rows = []
    p = params(tmp_path, max_steps=40, eval_interval=10, log_interval=5)
    result = pretrain(tiny_config(shards), p, shards, seed=0, live_dir=tmp_path / "live", on_eval=rows.append)
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40]  # step 0: the untrained model, about uniform over the vocabulary
    assert abs(rows[0]["val_loss"] - math.log(tiny_config(shards).vocab_size)) < 0.3 and "tokens_per_s" not in rows[0]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    assert rows[-1]["train_loss"] < math.log(tiny_config(shards).vocab_size) - 1.5
    assert rows[-1]["val_perplexity"] == pytest.approx(math.exp(rows[-1]["val_loss"]), rel=1e-3)
    meta = json.loads((shards / "meta.json").read_text())["splits"]["val"]
    assert rows[-1]["val_bits_per_byte"] == pytest.approx(rows[-1]["val_loss"] * meta["tokens"] / meta["bytes"] / math.log(2), rel=1e-4)
    assert rows[-1]["sample"].startswith("ROMEO:") and len(rows[-1]["sample"]) > len("ROMEO:")
    s = result.summary
    assert s["steps"] == 40 and s["tokens_seen"] == 40 * 128 and s["parameters"] > 0 and s["tokens_per_s"] > 0
    live = tmp_path / "live"
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["val_loss"] == rows[-1]["val_loss"] and "tokens_per_s" not in metrics  # throughput: summary.json, not compared
    assert json.loads((live / "summary.json").read_text())["tokens_per_s"] == s["tokens_per_s"]
    val_tsv = (live / "plots" / "metrics" / "val_loss.tsv").read_text().splitlines()
    assert val_tsv[0].split("\t") == ["step", "val_loss"] and [line.split("\t")[0] for line in val_tsv[1:]] == ["0", "10", "20", "30", "40"]
    curves = {
        name: [line.split("\t") for line in (live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()]
        for name in ("running_loss", "lr", "grad_norm")
    }
    for name, table in curves.items():  # every log_interval steps
        assert table[0] == ["step", name] and [int(r[0]) for r in table[1:]] == list(range(5, 41, 5)), name
    assert [float(r[1]) for r in curves["lr"][1:]] == pytest.approx([lr_at(step - 1, p) for step in range(5, 41, 5)], rel=1e-5)
    running = [float(r[1]) for r in curves["running_loss"][1:]]
    assert running[-1] < running[0] - 1 and all(float(r[1]) > 0 for r in curves["grad_norm"][1:])
    assert (live / "plots" / "images" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    samples = (live / "samples.txt").read_text()
    assert samples.count("--- step") == 5 and rows[-1]["sample"] in samples
    assert "sample" not in json.loads((live / "metrics.json").read_text())
    publish(result, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best", "config.json", "model.safetensors", "tokenizer.json"]
    assert not (tmp_path / "out" / "state.json").exists()


def test_resumed_run_is_bit_identical(shards, tmp_path):
    cfg = tiny_config(shards)
    whole = pretrain(cfg, params(tmp_path / "a", eval_interval=3, log_interval=5), shards, seed=5)
    half = pretrain(cfg, params(tmp_path / "b", eval_interval=3, log_interval=5), shards, seed=5, stop_after_steps=4)
    assert json.loads((half.latest / "state.json").read_text())["step"] == 4
    rest = pretrain(cfg, params(tmp_path / "b", eval_interval=3, log_interval=5), shards, seed=5)
    assert rest.summary["steps"] == 8
    a, b = weights(whole.latest), weights(rest.latest)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_file(whole.latest / "state.safetensors"), load_file(rest.latest / "state.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("optimizer."))
    # the resumed run's history holds the evaluations of both halves
    state = json.loads((rest.latest / "state.json").read_text())
    assert [r["step"] for r in state["history"]] == [0, 3, 6, 8]  # step 0 logged once, not again on resume
    # the running loss, lr and gradient norm of the resumed run are the uninterrupted run's (the running sums cross the checkpoint)
    assert [r["step"] for r in state["train_log"]] == [5, 8]
    assert state["train_log"] == json.loads((whole.latest / "state.json").read_text())["train_log"]


def test_interrupt_saves_a_checkpoint_and_the_next_run_resumes(shards, tmp_path, capsys):
    def interrupt(row):
        if row["step"] > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(shards), params(tmp_path), shards, seed=1, on_eval=interrupt)
    latest = next((tmp_path / "ckpt").iterdir()) / "latest"
    assert json.loads((latest / "state.json").read_text())["step"] == 4
    result = pretrain(tiny_config(shards), params(tmp_path), shards, seed=1)
    assert "resuming run" in capsys.readouterr().out and result.summary["steps"] == 8


def test_bad_inputs_name_the_parameter(shards, tmp_path):
    cfg = tiny_config(shards)
    with pytest.raises(GptlabError, match=r"tokens_per_step=100 is not a multiple of batch_size x context_length x processes = 4 x 16 x 1 = 64"):
        pretrain(cfg, params(tmp_path, tokens_per_step=100), shards, seed=0)
    with pytest.raises(GptlabError, match="context length 4000 is too long for these shards"):
        pretrain(dataclasses.replace(cfg, context_length=4000), params(tmp_path, tokens_per_step=4 * 4000), shards, seed=0)
    with pytest.raises(GptlabError, match=r"meta.json: missing; run `dvc repro tokenize`"):
        pretrain(cfg, params(tmp_path), tmp_path, seed=0)
    with pytest.raises(GptlabError, match="model.vocab_size=10 is smaller than the shards' vocabulary"):
        pretrain(dataclasses.replace(cfg, vocab_size=10), params(tmp_path), shards, seed=0)


def poison_from(monkeypatch, first_bad_call: int) -> None:
    """Make every training forward from the ``first_bad_call``-th on return a NaN loss."""
    original = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        logits, loss = original(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] >= first_bad_call:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    poison_from(monkeypatch, 7)  # 2 micro-batches per step: steps 1-3 are fine, step 4 is not
    with pytest.raises(GptlabError, match=r"step \d: training loss is nan; stopped. The last good checkpoint is .*latest"):
        pretrain(tiny_config(shards), params(tmp_path, eval_interval=2), shards, seed=0)
    latest = next((tmp_path / "ckpt").iterdir()) / "latest"
    assert json.loads((latest / "state.json").read_text())["step"] == 2


def test_resume_checkpoint_with_another_model_is_refused(shards, tmp_path):
    cfg = tiny_config(shards)
    first = pretrain(cfg, params(tmp_path), shards, seed=0, stop_after_steps=2)
    config_json = first.latest / "config.json"
    data = json.loads(config_json.read_text())
    data["model"]["n_layers"] = 3
    config_json.write_text(json.dumps(data))
    with pytest.raises(GptlabError, match=r"the checkpoint's model differs from params.yaml \(n_layers: 3 -> 2\)"):
        pretrain(cfg, params(tmp_path), shards, seed=0)


def cli_params(tmp_path, shards, **pretrain_kw) -> Path:
    cfg = tiny_config(shards)
    data = {
        "download": {"sources": {"x": {"uri": "file:///dev/null"}}},
        "model": {k: v for k, v in cfg.to_dict().items()},
        "pretrain": {**dataclasses.asdict(params(tmp_path)), **pretrain_kw},
        "seed": 3,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(shards, tmp_path):
    """The pretrain stage as a user runs it (`python -m stages.pretrain`, and under torchrun)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = {}
    for name, launcher in [("one", [sys.executable]), ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])]:
        folder = tmp_path / name
        shutil.copytree(root / "stages", folder / "stages", ignore=shutil.ignore_patterns("__pycache__"))
        (folder / "data").mkdir()
        (folder / "data" / "shards").symlink_to(shards)
        p = cli_params(folder, shards, max_steps=4, eval_interval=4, tokens_per_step=4 * 16 * 2)
        r = subprocess.run([*launcher, "-m", "stages.pretrain", "--params", str(p)], capture_output=True, text=True, env=env, timeout=300, cwd=folder)
        assert r.returncode == 0, r.stdout + r.stderr
        outs[name] = weights(folder / "models" / "pretrained")
    assert json.loads((tmp_path / "two" / "metrics" / "pretrain" / "summary.json").read_text())["processes"] == 2
    for key in outs["one"]:
        assert torch.allclose(outs["one"][key], outs["two"][key], atol=1e-5, rtol=1e-4), key


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(shards, tmp_path):
    cfg = tiny_config(shards)
    eager = pretrain(cfg, params(tmp_path / "eager", max_steps=3, eval_interval=3), shards, seed=2)
    compiled = pretrain(cfg, params(tmp_path / "compiled", max_steps=3, eval_interval=3, compile=True), shards, seed=2)
    assert compiled.summary["val_loss"] == pytest.approx(eager.summary["val_loss"], abs=1e-4)
    a, b = weights(eager.latest), weights(compiled.latest)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_warmup_is_clipped_to_a_tenth_of_max_steps_however_max_steps_is_set():
    from gptlab.params import FinetuneParams

    p = FinetuneParams(max_steps=10, warmup_steps=10, lr=1.0, min_lr=0.0)  # `-S finetune.max_steps=10`
    assert p.effective_warmup == 1 and lr_at(0, p) == 1.0 and lr_at(5, p) < 1.0
    assert FinetuneParams(warmup_steps=10).with_max_steps(10).effective_warmup == 1  # `--max-steps 10`: the same rule
    assert "warmup_steps=10 clipped to 1" in p.warmup_note()
    assert PretrainParams(max_steps=5, warmup_steps=20).effective_warmup == 0  # no longer an error
    # the defaults of params.yaml are not clipped
    assert PretrainParams(max_steps=280, warmup_steps=20).warmup_note() is None
    assert FinetuneParams(max_steps=120, warmup_steps=10).warmup_note() is None


def test_clipped_warmup_is_printed_once(shards, tmp_path, capsys):
    pretrain(tiny_config(shards), params(tmp_path, max_steps=8, warmup_steps=4), shards, seed=0, stop_after_steps=1)
    assert capsys.readouterr().out.count("pretrain: warmup_steps=4 clipped to 0") == 1


def test_rising_val_loss_warns_and_is_counted(tmp_path, capsys):
    from gptlab.train.evaluate import rising_evals
    from gptlab.train.loop import train_loop
    from gptlab.train.run import LoopRun
    from gptlab.train.runtime import Distributed

    class Batches:
        def step_batches(self, accum, rank, world):
            yield torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long)

        def state(self):
            return {}

        def restore(self, state):
            pass

    losses = iter([4.0, 3.0, 2.0, 2.1, 2.2, 2.3, 2.4])  # step 0 (before any update), then steps 1 to 6
    run = LoopRun("pretrain", "x", tmp_path / "run", "gpt2", Batches(), lambda m, a: {"train_loss": 1.0, "val_loss": next(losses)})
    model = GPT(GPTConfig(vocab_size=16, context_length=8, emb_dim=8, n_heads=2, n_layers=1))
    p = params(tmp_path, max_steps=6, eval_interval=1)
    result = train_loop(model, p, run, Distributed(), torch.device("cpu"), live_dir=tmp_path / "live")
    out = capsys.readouterr().out
    assert out.count("val loss rose 3 evaluations in a row (2.0000 at step 2 -> 2.3000 at step 5): overfitting?") == 1
    assert result.summary["val_loss_rising_evals"] == 4 and result.summary["best_val_loss"] == 2.0
    assert json.loads((tmp_path / "live" / "summary.json").read_text())["val_loss_rising_evals"] == 4  # provenance, not a metric
    assert rising_evals([{"val_loss": 1.0}]) == 0


def test_clean_checkpoints_keeps_the_most_recently_used_runs(tmp_path):
    from gptlab.train.retention import clean_checkpoints

    for i, name in enumerate(["old", "mid", "new", "cur"]):
        (tmp_path / name / "latest").mkdir(parents=True)
        os.utime(tmp_path / name / "latest", (1000 + i, 1000 + i))
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "notes").mkdir()  # not a run folder: never touched
    os.utime(tmp_path / "cur", (10, 10))  # the current run is kept however old
    removed = clean_checkpoints(tmp_path, keep=2, current=tmp_path / "cur")
    assert [p.name for p in removed] == ["old", "mid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur", "new", "notes"]
    assert clean_checkpoints(tmp_path, keep=0) == []


def test_a_run_keeps_only_keep_runs_run_folders(shards, tmp_path):
    for seed in range(3):
        pretrain(tiny_config(shards), params(tmp_path, keep_runs=2), shards, seed=seed, stop_after_steps=1)
    runs = [p for p in (tmp_path / "ckpt").iterdir()]
    assert len(runs) == 2


def test_full_val_covers_every_token_of_the_val_split_once(shards, tmp_path):
    """split_loss == the mean of every next-token loss of each val shard, whatever the context,
    and the stage's full_val_bits_per_byte is that loss in bits per byte (in metrics.json too)."""
    import torch.nn.functional as F

    from gptlab.data.shards import TokenShards
    from gptlab.train.evaluate import split_loss
    from gptlab.train.pretrain import full_split_batches

    torch.manual_seed(0)
    model = GPT(dataclasses.replace(tiny_config(shards), context_length=64)).eval()
    val = TokenShards.from_folder(shards, "val")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(val.paths)):  # every token after the first, each from its own full left context (<= 64)
            ids = torch.from_numpy(val.array(i).astype("int64"))
            for start in range(0, len(ids) - 1, 64):
                window = ids[start : start + 65]
                logits = model(window[None, :-1])[0][0]
                total += F.cross_entropy(logits, window[1:], reduction="sum").item()
                count += len(window) - 1
    assert count == val.n_tokens - len(val.paths) and val.n_tokens % 64  # a shorter last window is included
    off = torch.autocast("cpu", enabled=False)
    for batch in (1, 3, 64):
        assert split_loss(model, full_split_batches(val, 64, batch), torch.device("cpu"), off) == pytest.approx(total / count, rel=1e-5)
    result = pretrain(tiny_config(shards), params(tmp_path, max_steps=4), shards, seed=0, live_dir=tmp_path / "live")
    meta = json.loads((shards / "meta.json").read_text())["splits"]["val"]
    bpb = result.summary["full_val_bits_per_byte"]
    assert 0 < bpb < math.log2(tiny_config(shards).vocab_size) * meta["tokens"] / meta["bytes"] + 1e-6
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["full_val_bits_per_byte"] == bpb
