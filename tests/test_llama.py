"""The Llama family (RMSNorm, RoPE, SwiGLU, GQA, Qwen2's qkv biases) against ``transformers``'
LlamaForCausalLM and Qwen2ForCausalLM with random weights: logits, loss, greedy generation
(left-padded batches included), the KV cache, and the state-dict mapping both ways."""

import dataclasses

import pytest
import torch

from gptlab.config import PRESETS, GPTConfig
from gptlab.convert import hf_llama
from gptlab.convert.hf import export_hf, gpt_from_hf, load_hf_dir
from gptlab.errors import GptlabError
from gptlab.fused_loss import linear_cross_entropy
from gptlab.lora import inject_lora, merge_lora
from gptlab.model import GPT, KVCache
from gptlab.params import LoraParams
from gptlab.sampling import SamplingConfig, generate

transformers = pytest.importorskip("transformers")

LLAMA = GPTConfig(
    vocab_size=101, context_length=32, emb_dim=48, n_heads=6, n_kv_heads=2, n_layers=2, mlp_hidden=80,
    norm="rmsnorm", norm_eps=1e-5, positions="rope", rope_base=100000.0, mlp="swiglu",
    qkv_bias=False, proj_bias=False, mlp_bias=False, tie_embeddings=True,
)  # fmt: skip
QWEN2 = dataclasses.replace(LLAMA, qkv_bias=True, rope_base=1e6, norm_eps=1e-6, tie_embeddings=False, n_kv_heads=3)
LLAMA_BIASED = dataclasses.replace(LLAMA, qkv_bias=True, proj_bias=True, mlp_bias=True, n_kv_heads=None, tie_embeddings=False)
CONFIGS = {"llama-gqa-tied": LLAMA, "qwen2": QWEN2, "llama-biased-mha": LLAMA_BIASED}


def hf_model(config: GPTConfig, seed: int = 0):
    """A random-weight transformers model of ``config`` (biases and norm weights randomised too)."""
    hf_cfg = hf_llama.config_to_hf(config)
    cls = transformers.Qwen2Config if hf_cfg["model_type"] == "qwen2" else transformers.LlamaConfig
    cfg = cls(**{k: v for k, v in hf_cfg.items() if k not in ("model_type", "architectures", "torch_dtype", "rope_theta")})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return model


def ours_from(hf, config: GPTConfig) -> GPT:
    model = gpt_from_hf(hf.state_dict(), hf.config.to_dict())
    assert model.config == config
    return model.eval()


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    config = CONFIGS[request.param]
    hf = hf_model(config)
    return config, hf, ours_from(hf, config)


def test_logits_and_loss_match_transformers(pair):
    config, hf, ours = pair
    torch.manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (3, 20))
    targets = torch.randint(0, config.vocab_size, (3, 20))
    targets[0, :5] = -100
    with torch.no_grad():
        ref = hf(idx, labels=None)
        logits, _ = ours(idx)
        _, loss = ours(idx, targets)  # the fused head + cross-entropy path
    assert (logits - ref.logits).abs().max().item() < 1e-5
    ref_loss = torch.nn.functional.cross_entropy(ref.logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert abs(loss.item() - ref_loss.item()) < 1e-5


def test_greedy_matches_hf_generate_on_a_left_padded_batch(pair):
    config, hf, ours = pair
    torch.manual_seed(2)
    prompts = [torch.randint(1, config.vocab_size, (n,)).tolist() for n in (7, 3, 5)]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    new = 10
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=attn, max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = ref[:, width:].tolist()
    cfg = SamplingConfig(max_new_tokens=new, temperature=0)
    assert generate(ours, prompts, cfg) == expected
    assert generate(ours, prompts, cfg, use_cache=False) == expected
    assert [generate(ours, [p], cfg)[0] for p in prompts] == expected


def test_cached_equals_uncached_logits_and_past_the_context():
    torch.manual_seed(3)
    model = GPT(dataclasses.replace(QWEN2, context_length=12)).eval()
    idx = torch.randint(0, QWEN2.vocab_size, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, 2, 12, "cpu", torch.float32)
        first, _ = model(idx[:, :7], cache=cache)
        steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(7, 12)]
    assert cache.k.shape == (2, 2, 3, 12, 8)  # per key/value head
    assert torch.allclose(torch.cat([first, *steps], dim=1), full, atol=1e-5)
    cfg = SamplingConfig(max_new_tokens=20, temperature=0)
    prompts = [[5, 6, 7, 8, 9], [3, 4]]
    assert generate(model, prompts, cfg) == generate(model, prompts, cfg, use_cache=False)


def test_state_dict_round_trip_and_transformers_loads_the_export(tmp_path, pair):
    config, hf, ours = pair
    back = hf_llama.to_hf_state_dict(ours)
    ref = hf.state_dict()
    expected = {k for k in ref if not (config.tie_embeddings and k == "lm_head.weight")}
    assert set(back) == expected
    assert all(torch.equal(back[k], ref[k]) for k in expected)
    export_hf(ours, tmp_path / "hf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    again = load_hf_dir(tmp_path / "hf")
    idx = torch.randint(0, config.vocab_size, (1, 9))
    with torch.no_grad():
        assert (loaded(idx).logits - ours(idx)[0]).abs().max().item() < 1e-5
        assert torch.equal(again(idx)[0], ours(idx)[0])


def test_lora_wraps_the_llama_modules_and_merges():
    torch.manual_seed(4)
    model = GPT(LLAMA).eval()
    idx = torch.randint(0, LLAMA.vocab_size, (2, 10))
    names = inject_lora(model, LoraParams(r=4, alpha=8, dropout=0.0))
    assert names[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.proj"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
        wrapped, _ = model(idx)
        merged, _ = merge_lora(model)(idx)
    assert torch.allclose(wrapped, merged, atol=1e-5)


def test_fused_loss_and_gradients_on_the_llama_family():
    torch.manual_seed(5)
    model = GPT(QWEN2)
    idx, targets = torch.randint(0, QWEN2.vocab_size, (2, 16)), torch.randint(0, QWEN2.vocab_size, (2, 16))
    _, fused = model(idx, targets)
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _, plain = model(idx, targets, return_logits=True)
    plain.backward()
    assert abs(fused.item() - plain.item()) < 1e-5
    assert all(torch.allclose(grads[n], p.grad, atol=1e-5) for n, p in model.named_parameters())
    h = torch.randn(5, QWEN2.emb_dim)
    assert torch.isfinite(linear_cross_entropy(h, model.head.weight, torch.tensor([1, 2, -100, 3, 4])))


def test_presets_and_config_checks():
    smol = GPTConfig.preset("smollm2-135m")
    with torch.device("meta"):
        assert GPT(smol).num_parameters() == 134_515_008
    assert (smol.n_heads, smol.kv_heads, smol.hidden_dim, smol.rope_base, smol.vocab_size) == (9, 3, 1536, 100000.0, 49152)
    assert PRESETS["qwen2-tiny"].qkv_bias and not PRESETS["qwen2-tiny"].proj_bias and PRESETS["qwen2-tiny"].rope_base == 1e6
    assert GPTConfig.from_dict(smol.to_dict()) == smol
    assert "pos_emb.weight" not in GPT(PRESETS["qwen2-tiny"]).state_dict()
    with pytest.raises(GptlabError, match="n_kv_heads=4 does not divide n_heads=6"):
        dataclasses.replace(LLAMA, n_kv_heads=4)
    with pytest.raises(GptlabError, match="norm='batchnorm' is unknown"):
        dataclasses.replace(LLAMA, norm="batchnorm")
    with pytest.raises(GptlabError, match="neither Llama"):
        hf_llama.config_to_hf(dataclasses.replace(LLAMA, proj_bias=True))
    with pytest.raises(GptlabError, match="needs rmsnorm, rope and swiglu"):
        hf_llama.config_to_hf(GPTConfig())
