"""The Llama family in Hugging Face's layout (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``): its
``config.json`` and its tensor names, both ways. Loading and exporting folders is
:mod:`gptlab.convert.hf`'s (one loader for every family).

gptlab fuses ``q_proj``/``k_proj``/``v_proj`` into ``attn.qkv`` (rows ``[q | k | v]``) and
``gate_proj``/``up_proj`` into ``mlp.fc`` (rows ``[gate | up]``); everything else is a rename.
Hugging Face and gptlab share the rotate-half RoPE layout, so no row permutation is needed
(GGUF's is undone in :mod:`gptlab.convert.gguf`). Needs only torch; ``transformers`` is a
test-only reference.

Family in a Hugging Face config: ``model_type: llama`` holds ``attention_bias`` (q, k, v and o
together) and ``mlp_bias``; ``model_type: qwen2`` has q/k/v biases and no others.
"""

from __future__ import annotations

import re

import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT

MODEL_TYPES = ("llama", "qwen2")
LAYER_INDEX = re.compile(r"^(?:model\.)?layers\.(\d+)\.")  # a block's tensors, for the layer count

# ours -> theirs (per block, under model.layers.{i}.)
_BLOCK_RENAMES = {
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.proj.bias": "self_attn.o_proj.bias",
    "mlp.proj.weight": "mlp.down_proj.weight",
    "mlp.proj.bias": "mlp.down_proj.bias",
}
_TOP_RENAMES = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if params.get("rope_type", "default") not in ("default", None):
        raise GptlabError(f"config.json: rope_type={params.get('rope_type')!r} (RoPE scaling) is not supported; gptlab implements the default RoPE only")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict) -> GPTConfig:
    """Return the GPTConfig of a ``transformers`` Llama or Qwen2 ``config.json`` dict."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise GptlabError(f"config.json: model_type={kind!r} is not a Llama-family model; gptlab reads {', '.join(MODEL_TYPES)} here")
    if hf.get("hidden_act", "silu") != "silu":
        raise GptlabError(f"config.json: hidden_act={hf['hidden_act']!r}; gptlab's SwiGLU uses silu")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise GptlabError(f"config.json: head_dim={hf['head_dim']} != hidden_size / num_attention_heads; gptlab cannot hold this model")
    if kind == "qwen2":
        if hf.get("use_sliding_window"):
            raise GptlabError("config.json: use_sliding_window=true is not supported; gptlab attends over the whole context")
        biases = {"qkv_bias": True, "proj_bias": False, "mlp_bias": False}
    else:
        attn_bias = bool(hf.get("attention_bias", False))
        biases = {"qkv_bias": attn_bias, "proj_bias": attn_bias, "mlp_bias": bool(hf.get("mlp_bias", False))}
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf["max_position_embeddings"],
        emb_dim=hf["hidden_size"],
        n_heads=n_heads,
        n_kv_heads=None if hf.get("num_key_value_heads") in (None, n_heads) else hf["num_key_value_heads"],
        n_layers=hf["num_hidden_layers"],
        mlp_hidden=hf["intermediate_size"],
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        positions="rope",
        rope_base=_rope_theta(hf),
        mlp="swiglu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        drop_rate=float(hf.get("attention_dropout", 0.0)),
        **biases,
    )


def config_to_hf(config: GPTConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """Return a ``transformers`` LlamaConfig or Qwen2Config dict for a Llama-family ``config``.

    Qwen2 when the qkv projection alone has biases; Llama otherwise (which needs ``qkv_bias ==
    proj_bias``).
    """
    if (config.norm, config.positions, config.mlp) != ("rmsnorm", "rope", "swiglu"):
        raise GptlabError(
            f"model config has norm={config.norm}, positions={config.positions}, mlp={config.mlp}; "
            "a Llama-family export needs rmsnorm, rope and swiglu (export GPT-2 configs with convert.hf)"
        )
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.emb_dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "rope_theta": config.rope_base,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": config.drop_rate,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }
    if config.qkv_bias and not config.proj_bias and not config.mlp_bias:
        return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **common, "use_sliding_window": False}
    if config.qkv_bias != config.proj_bias:
        raise GptlabError(
            f"model config has qkv_bias={config.qkv_bias}, proj_bias={config.proj_bias}, mlp_bias={config.mlp_bias}: "
            "neither Llama (attention_bias covers q, k, v and o) nor Qwen2 (q, k, v only); make them agree"
        )
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **common,
        "attention_bias": config.qkv_bias,
        "mlp_bias": config.mlp_bias,
        "head_dim": config.head_dim,
    }


def from_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Return gptlab tensors from a ``transformers`` Llama/Qwen2 state dict (``model.`` prefix
    optional). Every tensor the config needs must be present; shapes are checked by the caller
    (``checkpoint.load_state``)."""
    sd = {(k if k.startswith(("model.", "lm_head.")) else f"model.{k}"): v for k, v in state.items()}

    def take(theirs: str) -> torch.Tensor:
        if theirs not in sd:
            raise GptlabError(f"Hugging Face state dict: missing tensor {theirs}; is it a {'/'.join(MODEL_TYPES)} checkpoint of this config?")
        return sd[theirs]

    out = {ours: take(theirs) for ours, theirs in _TOP_RENAMES.items()}
    for i in range(config.n_layers):
        pre = f"model.layers.{i}."
        for ours, theirs in _BLOCK_RENAMES.items():
            if ours.endswith(".bias") and not (config.proj_bias if ours.startswith("attn") else config.mlp_bias):
                continue
            out[f"blocks.{i}.{ours}"] = take(pre + theirs)
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([take(f"{pre}self_attn.{p}_proj.weight") for p in "qkv"])
        if config.qkv_bias:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([take(f"{pre}self_attn.{p}_proj.bias") for p in "qkv"])
        for suffix in ("weight", "bias") if config.mlp_bias else ("weight",):
            out[f"blocks.{i}.mlp.fc.{suffix}"] = torch.cat([take(f"{pre}mlp.gate_proj.{suffix}"), take(f"{pre}mlp.up_proj.{suffix}")])
    if not config.tie_embeddings:
        out["head.weight"] = take("lm_head.weight")
    return out


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Return ``model``'s tensors in the ``transformers`` Llama/Qwen2 layout (contiguous copies;
    ``lm_head.weight`` only when the head is not tied)."""
    config = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {theirs: sd[ours].contiguous() for ours, theirs in _TOP_RENAMES.items()}
    q_rows, kv_rows = config.emb_dim, config.kv_heads * config.head_dim
    for i in range(config.n_layers):
        pre, ours = f"model.layers.{i}.", f"blocks.{i}."
        for name, theirs in _BLOCK_RENAMES.items():
            if ours + name in sd:
                out[pre + theirs] = sd[ours + name].contiguous()
        for suffix in ("weight", "bias"):
            if ours + f"attn.qkv.{suffix}" in sd:
                q, k, v = sd[ours + f"attn.qkv.{suffix}"].split([q_rows, kv_rows, kv_rows])
                out |= {f"{pre}self_attn.{p}_proj.{suffix}": t.contiguous() for p, t in zip("qkv", (q, k, v))}
            if ours + f"mlp.fc.{suffix}" in sd:
                gate, up = sd[ours + f"mlp.fc.{suffix}"].chunk(2)
                out[f"{pre}mlp.gate_proj.{suffix}"], out[f"{pre}mlp.up_proj.{suffix}"] = gate.contiguous(), up.contiguous()
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"].contiguous()
    return out
