"""Instruction fine-tuning through the shared training loop, and the generate stage's responses."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from gptlab.checkpoint import load_model, save_model
from gptlab.config import GPTConfig
from gptlab.convert.load_any import load_any
from gptlab.data.instructions import encode_records, load_records, write_splits
from gptlab.errors import GptlabError
from gptlab.generate import respond
from gptlab.lora import base_state, load_adapter, merge_lora, model_hash
from gptlab.model import GPT
from gptlab.params import FinetuneParams, LoraParams
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import gpt2
from gptlab.train.evaluate import split_loss
from gptlab.train.finetune import finetune, publish_finetuned, scored_batches
from tests.helpers.records import INSTRUCTIONS

RECORDS = INSTRUCTIONS


@pytest.fixture(scope="module")
def base_and_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2))
    save_model(root / "base", model)
    write_splits({"train": RECORDS, "val": RECORDS[:2], "test": RECORDS[2:4]}, root / "splits")
    return root / "base", root / "splits"


def params(tmp_path, **overrides) -> FinetuneParams:
    base = dict(max_steps=12, lr=1e-2, min_lr=1e-3, warmup_steps=2, weight_decay=0.0, eval_interval=6, batch_size=3, device="cpu", precision="fp32")
    base.update(checkpoint_dir=str(tmp_path / "ckpt"), lora=LoraParams(r=4, alpha=8, dropout=0.0))
    base.update(overrides)
    return FinetuneParams(**base)


def test_lora_finetune_lowers_loss_and_leaves_base_weights_untouched(base_and_splits, tmp_path, capsys):
    base_dir, splits = base_and_splits
    before = load_file(base_dir / "model.safetensors")
    result = finetune(base_dir, splits / "train.json", splits / "val.json", params(tmp_path), seed=0, live_dir=tmp_path / "live")
    s = result.train.summary
    history_losses = [row["train_loss"] for row in load_history(result)]
    assert history_losses[-1] < history_losses[0]
    assert s["val_loss"] < s["base_val_loss"]
    assert s["val_loss_gain"] == pytest.approx(s["base_val_loss"] - s["val_loss"], abs=1e-4)
    # the curves start at step 0 with the base's val loss, measured here on the base model itself (no LoRA layers)
    history = load_history(result)
    assert [r["step"] for r in history] == [0, 6, 12] and history[0]["val_loss"] == s["base_val_loss"]
    base, tok = load_any(base_dir, torch.device("cpu"))
    val = encode_records(load_records(splits / "val.json"), tok, "alpaca")
    assert s["base_val_loss"] == pytest.approx(
        split_loss(base, scored_batches(val, 3, pad_id=tok.eot_token, allowed_max_length=96, mask_prompt=False), torch.device("cpu")), abs=1e-5
    )
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["base_val_loss"] == s["base_val_loss"] and metrics["val_loss_gain"] == s["val_loss_gain"] and "tokens_per_s" not in metrics
    val_tsv = (tmp_path / "live" / "plots" / "metrics" / "val_loss.tsv").read_text().splitlines()
    assert val_tsv[1].split("\t") == ["0", str(s["base_val_loss"])]
    running = (tmp_path / "live" / "plots" / "metrics" / "running_loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in running[1:]] == ["10", "12"]  # every log_interval (10) steps and the last
    # 2 blocks x (qkv 4x(32+96) + proj 4x(32+32) + fc 4x(32+128) + mlp_proj 4x(128+32))
    assert s["trainable_parameters"] == 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    after = base_state(result.model)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name

    out = publish_finetuned(result, tmp_path / "finetuned")
    assert (out / "adapter" / "adapter.safetensors").exists() and (out / "model.safetensors").exists()
    merged, _ = load_model(out)
    # the merged model == base + adapter loaded again
    again, _ = load_model(base_dir)
    load_adapter(again, out / "adapter", model_hash(base_dir))
    again = merge_lora(again).eval()
    x = torch.randint(0, 50257, (2, 16))
    assert torch.allclose(merged(x)[0], again(x)[0], atol=1e-5)

    # `gptlab generate --adapter` answers like the merged model
    from gptlab.cli import main

    prompt = "Name a colour."
    ids = gpt2().encode_ordinary(prompt)
    want = gpt2().decode(generate(merged, [ids], SamplingConfig(max_new_tokens=4, temperature=0.0), [50256])[0])
    argv = ["sample", "--model", str(base_dir), "--adapter", str(out / "adapter"), "--prompt", prompt, "--max-new-tokens", "4", "--temperature", "0"]
    capsys.readouterr()  # drop what fine-tuning printed
    assert main(argv) == 0
    assert capsys.readouterr().out == want + "\n"


def test_full_finetune_changes_every_weight(base_and_splits, tmp_path):
    base_dir, splits = base_and_splits
    before = load_file(base_dir / "model.safetensors")
    result = finetune(base_dir, splits / "train.json", splits / "val.json", params(tmp_path, method="full", max_steps=4, eval_interval=4), seed=0)
    assert result.lora is None
    assert result.train.summary.get("trainable_parameters") is None  # all of them
    after = result.model.state_dict()
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def test_finetune_resumes_exactly(base_and_splits, tmp_path):
    base_dir, splits = base_and_splits
    straight = finetune(base_dir, splits / "train.json", splits / "val.json", params(tmp_path / "a", max_steps=6, eval_interval=3), seed=1)
    p = params(tmp_path / "b", max_steps=6, eval_interval=3)
    finetune(base_dir, splits / "train.json", splits / "val.json", p, seed=1, stop_after_steps=3)
    resumed = finetune(base_dir, splits / "train.json", splits / "val.json", p, seed=1)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.train.summary["val_loss"] == resumed.train.summary["val_loss"]


def load_history(result):
    import json

    return json.loads((result.train.latest / "state.json").read_text())["history"]


def test_respond_strips_the_prompt_and_stops_at_end_of_text(base_and_splits):
    base_dir, splits = base_and_splits
    model, tok = load_model(base_dir)
    records = RECORDS[:5]
    out = respond(model, tok, records, SamplingConfig(max_new_tokens=6, temperature=0.0), batch_size=2)
    assert [r["instruction"] for r in out] == [r["instruction"] for r in records]
    assert set(out[0]) == {"instruction", "input", "output", "response"}
    # batched answers equal one-at-a-time answers (same order, padding does not leak)
    single = [respond(model, tok, [r], SamplingConfig(max_new_tokens=6, temperature=0.0))[0]["response"] for r in records]
    assert [r["response"] for r in out] == single
    assert all("### Response" not in r["response"] for r in out)


def test_respond_stops_at_end_of_text():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2, n_layers=1)).eval()
    tok = gpt2()
    with torch.no_grad():  # make end-of-text the only likely token
        model.head.weight.zero_() if not model.config.tie_embeddings else None
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.tok_emb.weight.zero_()
        model.tok_emb.weight[tok.eot_token, 0] = 10.0
    out = respond(model, tok, RECORDS[:2], SamplingConfig(max_new_tokens=8, temperature=0.0))
    assert [r["response"] for r in out] == ["", ""]


def test_finetune_params_reject_bad_values():
    with pytest.raises(GptlabError, match="batch_size=0"):
        dataclasses.replace(FinetuneParams(), batch_size=0)


FT = dict(max_steps=8, lr=1e-2, min_lr=1e-3, warmup_steps=2, weight_decay=0.0, eval_interval=3, batch_size=3, device="cpu", precision="fp32",
          lora={"r": 4, "alpha": 8, "dropout": 0.0})  # fmt: skip


@pytest.mark.slow
def test_finetune_survives_kill_9_and_sigterm_bit_identical(base_and_splits, tmp_path):
    """Fine-tuning's fault tests (as pretrain's): a SIGTERM mid-step, then random kills."""
    from tests.helpers.faults import interrupted_equals_straight, random_faults, stage_spec

    base_dir, splits = base_and_splits
    straight = stage_spec(tmp_path / "a", "finetune", FT, splits, seed=3, base=base_dir)
    faulted = stage_spec(tmp_path / "b", "finetune", FT, splits, seed=3, base=base_dir)
    faults = ["mid_step#4=TERM", *random_faults(11, 8, n=2, signals=("KILL",))]
    a, b, codes = interrupted_equals_straight(straight, faulted, faults)
    assert codes[0] == 130 and a == b and a["out"]
