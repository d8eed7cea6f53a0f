"""PEFT adapters (issue 15.4): save_adapter_and_peft's PEFT files load with peft onto the Hugging Face
export of the base model and give the logits of gptlab's merged model."""

import copy
import json

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.convert.hf import export_hf
from gptlab.lora import inject_lora, lora_modules, merge_lora, model_hash
from gptlab.model import GPT
from gptlab.params import LoraParams
from gptlab.train.finetune import save_adapter_and_peft
from tests.convert.test_hf_export import LLAMA, QWEN2, random_model

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

GPT2 = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2)
ALL = ["qkv", "proj", "fc", "mlp_proj", "head"]


def adapted(config: GPTConfig, targets, seed=0):
    """Return (base, model with a random non-zero LoRA, its LoraParams)."""
    base = random_model(config, seed)
    model = copy.deepcopy(base)
    cfg = LoraParams(r=4, alpha=8.0, dropout=0.0, targets=targets)
    inject_lora(model, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.3)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)
    return base, model, cfg


@pytest.mark.parametrize(
    "config",
    [GPT2, GPTConfig(**{**GPT2.to_dict(), "tie_embeddings": False}), GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=40, **LLAMA),
     GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=40, **QWEN2)],
    ids=["gpt2-tied", "gpt2", "llama", "qwen2"],
)  # fmt: skip
def test_peft_loads_our_adapter_onto_the_hf_export(tmp_path, config):
    base, model, cfg = adapted(config, ALL)
    folder = save_adapter_and_peft(model, cfg, tmp_path / "adapter", model_hash(base))
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == 4 and peft_config["lora_alpha"] == 8.0
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(export_hf(base, tmp_path / "hf")).eval()
    hf = peft.PeftModel.from_pretrained(hf_base, folder).eval()
    merged = merge_lora(model).eval()
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = merged(idx)[0], hf(input_ids=idx).logits
        assert (ref - base(idx)[0]).abs().max() > 0.1  # the adapter matters
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max()


def test_gpt2_key_names_are_peft_s(tmp_path):
    from safetensors.torch import load_file

    base, model, cfg = adapted(GPT2, ["qkv"])
    keys = set(load_file(save_adapter_and_peft(model, cfg, tmp_path / "a", model_hash(base)) / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys and len(keys) == 4


def test_model_without_hf_form_keeps_our_format_only(tmp_path):
    config = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=1, qkv_bias=False)
    base = GPT(config)
    model = copy.deepcopy(base)
    cfg = LoraParams(r=2, alpha=4.0, targets=["qkv"])
    inject_lora(model, cfg)
    folder = save_adapter_and_peft(model, cfg, tmp_path / "a", model_hash(base))
    assert not (folder / "adapter_config.json").exists()
    assert "qkv biases" in json.loads((folder / "adapter.json").read_text())["peft"]["skipped"]
