"""Defaults that fit the data: passes over the train split said (and warned about) before
training, the evaluation interval derived from the data when eval_interval is null, and the
rising-val-loss warning firing near the minimum on a small corpus."""

import json
import random
import re
from pathlib import Path

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.data.tokenize import tokenize_corpus
from gptlab.params import FinetuneParams, LoraParams, PretrainParams, TokenizeParams, load_params
from gptlab.train.cadence import derived_eval_interval, finetune_cadence, pretrain_cadence
from gptlab.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[2]


def test_the_derived_interval_is_one_evaluation_per_pass_within_10_to_100_per_run():
    assert derived_eval_interval(850, 360.2) == 85  # a large corpus: 10 evaluations a run
    assert derived_eval_interval(850, 40.0) == 40  # one per pass
    assert derived_eval_interval(850, 1.06) == 9  # the 20 kB story: 100 a run, not one a step
    assert derived_eval_interval(5, 0.3) == 1
    p = PretrainParams(max_steps=850, tokens_per_step=4096)
    c = pretrain_cadence(p, 4328)
    assert c.passes == pytest.approx(850 * 4096 / 4328) and c.eval_interval == 9 and c.derived
    assert pretrain_cadence(PretrainParams(max_steps=850, tokens_per_step=4096, eval_interval=170), 4328).eval_interval == 170  # an integer wins
    f = finetune_cadence(FinetuneParams(max_steps=100, batch_size=4, grad_accum=2), 160, processes=2)
    assert f.passes == pytest.approx(100 * 4 * 2 * 2 / 160) and f.eval_interval == 10


def test_the_default_params_evaluate_pretraining_ten_times_on_the_committed_corpus():
    params = load_params(ROOT / "params.yaml")
    assert params.pretrain.eval_interval is None
    train_tokens = json.loads((ROOT / "metrics" / "tokenize.json").read_text())["tokens"]["train"]
    c = pretrain_cadence(params.pretrain, train_tokens)
    assert c.eval_interval == 85 and 2 < c.passes < 16  # params.yaml's comment says 85


def story_shards(root: Path) -> Path:
    """Word-level shards of a small "story": seeded random sentences over 60 made-up words
    (~8 kB), whose val text the model cannot learn from the train text beyond word frequencies."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7))) for _ in range(60)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) + "." for _ in range(200)]
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "story.txt").write_text("\n".join(lines) + "\n")
    tokenize_corpus(TokenizeParams(tokenizer="simple", val_fraction=0.2, workers=1), root / "corpus", root / "shards", seed=0)
    return root / "shards"


def first_rising_warning(out: str) -> int | None:
    """The step of the first "val loss rose" warning in ``out``, or None."""
    m = re.search(r"val loss rose \d+ evaluations in a row \(.* -> [\d.]+ at step (\d+)\)", out)
    return int(m.group(1)) if m else None


def test_a_small_corpus_is_warned_about_and_its_val_minimum_is_seen(tmp_path, capsys, one_torch_thread):
    shards = story_shards(tmp_path)
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    config = GPTConfig(vocab_size=vocab, context_length=16, emb_dim=128, n_heads=4, n_layers=2)

    def run(eval_interval, name):
        p = PretrainParams(max_steps=150, batch_size=32, tokens_per_step=512, lr=3e-3, min_lr=1e-4, warmup_steps=5, eval_interval=eval_interval,
                           eval_windows=16, precision="fp32", device="cpu", sample_tokens=0, sample_prompt="", checkpoint_dir=str(tmp_path / name))  # fmt: skip
        rows = []
        result = pretrain(config, p, shards, seed=0, live_dir=tmp_path / f"live-{name}", on_eval=rows.append)
        return result, rows, capsys.readouterr()

    result, rows, out = run(None, "derived")
    train_tokens = json.loads((shards / "meta.json").read_text())["splits"]["train"]["tokens"]
    passes = 150 * 512 / train_tokens
    assert f"= {passes:,.2f} passes over the {train_tokens:,} train tokens; evaluating every 2 steps (eval_interval null" in out.out
    warning = [line for line in out.err.splitlines() if "warning: pretrain.max_steps=150" in line]
    assert len(warning) == 1 and f"makes {passes:,.1f} passes" in warning[0] and "lower pretrain.max_steps (e.g. to " in warning[0]
    assert result.summary["train_passes"] == pytest.approx(passes, abs=1e-3) and result.summary["eval_interval"] == 2
    metrics = json.loads((tmp_path / "live-derived" / "metrics.json").read_text())
    assert metrics["train_passes"] == pytest.approx(passes, abs=1e-3)
    # the curve shows the minimum early, and the rising-loss warning fires soon after it
    best = min(rows, key=lambda r: r["val_loss"])
    assert len(rows) == 76 and rows[0]["step"] == 0  # step 0, then every 2 steps
    assert best["step"] < 50 and rows[-1]["val_loss"] > best["val_loss"] + 0.3
    warned = first_rising_warning(out.out)
    assert warned is not None and best["step"] < warned <= best["step"] + 40, (best["step"], warned)

    _, old_rows, old = run(30, "every-30")  # the old default's ratio (850 / 170): five evaluations
    assert [r["step"] for r in old_rows] == [0, 30, 60, 90, 120, 150]
    old_warned = first_rising_warning(old.out)
    assert old_warned is None or old_warned >= warned + 40, (warned, old_warned)


def test_finetune_says_its_epochs_and_warns_past_five(tmp_path, capsys):
    from gptlab.checkpoint import save_model
    from gptlab.data.instructions import write_splits
    from gptlab.model import GPT
    from gptlab.train.finetune import finetune
    from tests.helpers.records import INSTRUCTIONS

    torch.manual_seed(0)
    save_model(tmp_path / "base", GPT(GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2)))
    write_splits({"train": INSTRUCTIONS, "val": INSTRUCTIONS[:2], "test": INSTRUCTIONS[2:4]}, tmp_path / "splits")
    p = FinetuneParams(max_steps=12, batch_size=3, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=None, device="cpu", precision="fp32",
                       checkpoint_dir=str(tmp_path / "ckpt"), lora=LoraParams(r=4, alpha=8, dropout=0.0))  # fmt: skip
    rows = []
    result = finetune(tmp_path / "base", tmp_path / "splits" / "train.json", tmp_path / "splits" / "val.json", p, seed=0, live_dir=tmp_path / "live",
                      on_eval=rows.append)  # fmt: skip
    out = capsys.readouterr()
    assert "finetune: 12 steps = 6.00 epochs over the 6 train records; evaluating every 2 steps (eval_interval null" in out.out
    assert "finetune: warning: finetune.max_steps=12 makes 6.0 epochs over the 6 train records (more than 5)" in out.err
    assert "lower finetune.max_steps (e.g. to 10)" in out.err
    assert [r["step"] for r in rows] == [0, 2, 4, 6, 8, 10, 12]  # step 0: the base before any update
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["train_epochs"] == 6.0
    assert result.train.summary["eval_interval"] == 2
