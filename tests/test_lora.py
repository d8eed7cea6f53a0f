import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlab.checkpoint import load_model, model_state, save_model
from gptlab.config import GPTConfig
from gptlab.data.instructions import InstructionBatches, collate, encode_records
from gptlab.data.prompts import format_example
from gptlab.errors import GptlabError
from gptlab.lora import (
    LoRALinear,
    base_state,
    inject_lora,
    load_adapter,
    lora_modules,
    lora_parameter_counts,
    lora_state,
    mark_only_lora_trainable,
    merge_lora,
    model_hash,
    save_adapter,
)
from gptlab.model import GPT
from gptlab.params import LoraParams
from gptlab.tokenizer import ENDOFTEXT, UNK, SimpleTokenizer
from tests.helpers.records import INSTRUCTIONS

ALL = ("qkv", "proj", "fc", "mlp_proj", "head")


TOK = SimpleTokenizer([f"w{i}" for i in range(59)] + [ENDOFTEXT, UNK])  # fits the 61 ids of tiny()


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=61, context_length=32, emb_dim=32, n_heads=4, n_layers=2, **overrides)).eval()


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.2)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)


IDX = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(0))


def test_config_validation_lists_choices():
    assert LoraParams(targets=("qkv", "head")).targets == ["qkv", "head"]
    assert LoraParams(r=8, alpha=16).scaling == 2.0
    assert LoraParams.from_dict(json.loads(json.dumps(LoraParams(r=4).to_dict()))) == LoraParams(r=4)
    for bad, message in [
        (dict(r=0), "r=0 is impossible"),
        (dict(r=2.5), "r=2.5 is impossible"),
        (dict(alpha=0), "alpha=0 is impossible"),
        (dict(dropout=1.0), "dropout=1.0 is impossible"),
        (dict(targets=()), "targets is empty"),
        (dict(targets=("attn",)), r"targets: 'attn' is unknown; choose among qkv, proj, fc, mlp_proj, head \(or a glob"),
    ]:
        with pytest.raises(GptlabError, match=message):
            LoraParams(**bad)


def test_targets_names_and_globs():
    model = tiny()
    assert inject_lora(model, LoraParams(targets=("mlp_proj", "qkv"))) == ["blocks.0.attn.qkv", "blocks.0.mlp.proj", "blocks.1.attn.qkv", "blocks.1.mlp.proj"]
    assert inject_lora(tiny(), LoraParams(targets=("blocks.1.*",))) == ["blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"]
    assert inject_lora(tiny(), LoraParams(targets=("head",))) == ["head"]
    with pytest.raises(GptlabError, match=r"'blocks.7.\*' \(pattern 'blocks.7.\*'\) matches no linear layer"):
        inject_lora(tiny(), LoraParams(targets=("blocks.7.*",)))
    with pytest.raises(GptlabError, match="already has LoRA layers"):
        inject_lora(model, LoraParams())


def test_lora_linear_with_zero_b_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0)
    x = torch.randn(2, 5, 12)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer.lora_B, torch.zeros(20, 4)) and layer.lora_A.abs().sum() > 0
    bound = 1 / 12**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in 12, as peft
    assert layer.lora_A.abs().max() <= bound
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.merge()(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.linear(x, layer.weight, layer.bias), expected, atol=1e-5, rtol=1e-5)


def test_merged_logits_equal_unmerged_tied_head(tmp_path):
    model = tiny()
    inject_lora(model, LoraParams(r=4, alpha=8, dropout=0.1, targets=ALL))
    randomize_adapters(model)
    model.eval()
    assert model.head.base.weight is model.tok_emb.weight  # the base tie is kept
    logits, _ = model(IDX)
    # the fused loss path reads head.weight: it must see the adapter too
    _, fused = model(IDX, IDX)
    torch.testing.assert_close(fused, F.cross_entropy(logits.flatten(0, 1), IDX.flatten()), atol=1e-5, rtol=1e-5)
    tok_emb = model.tok_emb.weight.detach().clone()
    merged = merge_lora(model)
    assert not lora_modules(merged) and all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("qkv", "proj", "fc", "head")))
    assert merged.config.tie_embeddings is False and merged.head.weight is not merged.tok_emb.weight
    assert torch.equal(merged.tok_emb.weight, tok_emb)
    torch.testing.assert_close(merged(IDX)[0], logits, atol=1e-5, rtol=1e-5)
    save_model(tmp_path / "merged", merged, TOK)
    reloaded, _ = load_model(tmp_path / "merged")
    torch.testing.assert_close(reloaded(IDX)[0], logits, atol=1e-5, rtol=1e-5)


def test_merge_without_head_keeps_tie():
    model = tiny()
    inject_lora(model, LoraParams(r=2, targets=("qkv", "fc")))
    randomize_adapters(model)
    logits = model(IDX)[0]
    merge_lora(model)
    assert model.config.tie_embeddings and model.head.weight is model.tok_emb.weight
    torch.testing.assert_close(model(IDX)[0], logits, atol=1e-5, rtol=1e-5)


def test_gpt2_124m_trainable_count():
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2-124M"))
    base_total = model.num_parameters()
    names = inject_lora(model, LoraParams(r=16, alpha=32, targets=("qkv", "proj", "fc", "mlp_proj")))
    mark_only_lora_trainable(model)
    r, d = 16, 768
    per_block = r * (d + 3 * d) + r * (d + d) + r * (d + 4 * d) + r * (4 * d + d)  # qkv, proj, fc, mlp_proj
    assert per_block == 196_608
    trainable, total = lora_parameter_counts(model)
    print(f"gpt2-124M, LoRA r=16 on qkv/proj/fc/mlp_proj: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)")
    assert len(names) == 48
    assert trainable == 12 * per_block == 2_359_296
    assert base_total == 124_439_808 and total == base_total + trainable


def test_only_adapters_trainable():
    model = tiny()
    with pytest.raises(GptlabError, match="no LoRA layers"):
        mark_only_lora_trainable(model)
    inject_lora(model, LoraParams(r=2, targets=ALL))
    mark_only_lora_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state(model)) and len(trainable) == 2 * 9
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert not model.tok_emb.weight.requires_grad
    assert lora_parameter_counts(model)[0] == sum(p.numel() for p in lora_state(model).values())


def test_adapter_round_trip_and_hash(tmp_path):
    base = tiny(seed=3)
    save_model(tmp_path / "base", base, TOK)
    base_hash = model_hash(tmp_path / "base")
    assert model_hash(base) == base_hash and len(base_hash) == 64
    cfg = LoraParams(r=4, alpha=4, dropout=0.0, targets=("qkv", "mlp_proj", "head"))
    inject_lora(base, cfg)
    randomize_adapters(base)
    assert model_hash(base) == base_hash  # the adapters are not part of the base hash
    logits = base(IDX)[0]
    save_adapter(base, cfg, tmp_path / "adapter", base_hash)
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert meta["r"] == 4 and meta["targets"] == ["qkv", "mlp_proj", "head"] and meta["base_model_hash"] == base_hash
    assert meta["modules"] == ["blocks.0.attn.qkv", "blocks.0.mlp.proj", "blocks.1.attn.qkv", "blocks.1.mlp.proj", "head"]

    fresh, _ = load_model(tmp_path / "base")
    assert load_adapter(fresh, tmp_path / "adapter", model_hash(fresh)) == cfg
    assert torch.equal(fresh(IDX)[0], logits)
    for name, tensor in lora_state(base).items():
        assert torch.equal(lora_state(fresh)[name], tensor)

    resumed, _ = load_model(tmp_path / "base")  # a model that already has (fresh) LoRA layers
    inject_lora(resumed, cfg)
    load_adapter(resumed, tmp_path / "adapter")
    assert torch.equal(resumed(IDX)[0], logits)

    other = tiny(seed=4)
    with pytest.raises(GptlabError, match=r"adapter was trained on base model [0-9a-f]{16}\.\.\., this base model is"):
        load_adapter(other, tmp_path / "adapter", model_hash(other))
    assert not lora_modules(other)  # nothing injected on failure
    wider = GPT(GPTConfig(vocab_size=61, context_length=32, emb_dim=64, n_heads=4, n_layers=2))
    with pytest.raises(GptlabError, match=r"lora_A has shape \(4, 32\), the model needs \(4, 64\)"):
        load_adapter(wider, tmp_path / "adapter")
    assert not lora_modules(wider)
    with pytest.raises(GptlabError, match="not a LoRA adapter folder|adapter.json: no such file"):
        load_adapter(tiny(), tmp_path / "base")


RECORDS = INSTRUCTIONS


def test_few_step_lora_training_changes_only_adapters():
    tok = SimpleTokenizer.train(p + r for p, r in map(format_example, RECORDS))
    examples = encode_records(RECORDS, tok)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=4, n_layers=2)
    model = GPT(config)
    base = {k: v.clone() for k, v in model_state(model).items()}
    inject_lora(model, LoraParams(r=4, alpha=8, dropout=0.0, targets=("qkv", "proj", "fc", "mlp_proj", "head")))
    mark_only_lora_trainable(model)
    adapters_before = {k: v.clone() for k, v in lora_state(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    kw = dict(pad_id=tok.eot_token, mask_prompt=True)
    full_x, full_y = collate(examples, **kw)
    model.train()
    with torch.no_grad():
        loss_before = model(full_x, full_y)[1].item()
    batches = InstructionBatches(examples, batch_size=3, seed=0, **kw)
    for _ in range(15):
        x, y = next(batches)
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        loss_after = model(full_x, full_y)[1].item()
    print(f"LoRA few-step training loss: {loss_before:.3f} -> {loss_after:.3f}")
    assert loss_after < 0.7 * loss_before
    after = base_state(model)  # the base tensors under their plain names
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert all(not torch.equal(v, adapters_before[k]) for k, v in lora_state(model).items())
