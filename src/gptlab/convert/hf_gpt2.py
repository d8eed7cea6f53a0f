"""The GPT-2 family in Hugging Face's layout: its ``config.json`` and its tensor names, both ways.

``transformers`` stores GPT-2's linear layers as ``Conv1D`` with weights of shape (in, out),
the transpose of ``nn.Linear``; this module maps names and transposes. Loading and exporting
folders is :mod:`gptlab.convert.hf`'s (one loader for every family).
"""

from __future__ import annotations

import re

import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT

LAYER_INDEX = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")  # a block's tensors, for the layer count

# ours -> theirs, per block; True where the weight is a Conv1D (transposed)
_BLOCK_MAP = {
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),
    "norm2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True),
    "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True),
    "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_MAP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "final_norm.weight": "ln_f.weight",
    "final_norm.bias": "ln_f.bias",
}


def config_from_hf(hf: dict) -> GPTConfig:
    """Return the GPTConfig of a ``transformers`` GPT-2 ``config.json`` dict."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise GptlabError(f"config.json: activation_function={act!r} is not GPT-2's tanh GELU; gptlab cannot hold this model")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf["n_positions"],
        emb_dim=hf["n_embd"],
        n_heads=hf["n_head"],
        n_layers=hf["n_layer"],
        drop_rate=float(hf.get("resid_pdrop", 0.0)),
        qkv_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def config_to_hf(config: GPTConfig) -> dict:
    """Return a ``transformers`` GPT2Config dict for ``config``."""
    if not config.qkv_bias:
        raise GptlabError("GPT-2 in transformers always has qkv biases; export a model with qkv_bias: true")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def from_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Return gptlab tensors from a ``transformers`` GPT-2 state dict (with or without the
    ``transformer.`` prefix). Every expected tensor must be present with the right shape."""
    sd = {k.removeprefix("transformer."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}

    def take(theirs: str, transpose: bool = False) -> torch.Tensor:
        if theirs not in sd:
            raise GptlabError(f"Hugging Face state dict: missing tensor {theirs}")
        t = sd[theirs]
        return t.t().contiguous() if transpose else t

    for ours, theirs in _TOP_MAP.items():
        out[ours] = take(theirs)
    for i in range(config.n_layers):
        for ours, (theirs, transpose) in _BLOCK_MAP.items():
            out[f"blocks.{i}.{ours}"] = take(f"h.{i}.{theirs}", transpose)
    if not config.tie_embeddings:
        out["head.weight"] = take("lm_head.weight")
    return out


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Return ``model``'s tensors in the ``transformers`` GPT2LMHeadModel layout (contiguous copies)."""
    sd = model.state_dict()
    out = {f"transformer.{theirs}": sd[ours].detach().contiguous() for ours, theirs in _TOP_MAP.items()}
    for i in range(model.config.n_layers):
        for ours, (theirs, transpose) in _BLOCK_MAP.items():
            t = sd[f"blocks.{i}.{ours}"].detach()
            out[f"transformer.h.{i}.{theirs}"] = (t.t() if transpose else t).contiguous()
    if not model.config.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"].detach().contiguous()
    return out
