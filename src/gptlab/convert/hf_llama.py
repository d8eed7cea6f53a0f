"""Hugging Face interop for the Llama family: ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` configs
and state dicts, in and out.

gptlab fuses ``q_proj``/``k_proj``/``v_proj`` into ``attn.qkv`` (rows ``[q | k | v]``) and
``gate_proj``/``up_proj`` into ``mlp.fc`` (rows ``[gate | up]``); everything else is a rename.
Hugging Face and gptlab share the rotate-half RoPE layout, so no row permutation is needed
(GGUF's is undone in :mod:`gptlab.convert.gguf`). Needs only torch; ``transformers`` is a
test-only reference.

Family in a Hugging Face config: ``model_type: llama`` holds ``attention_bias`` (q, k, v and o
together) and ``mlp_bias``; ``model_type: qwen2`` has q/k/v biases and no others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT

MODEL_TYPES = ("llama", "qwen2")
_LAYER_INDEX = re.compile(r"^(?:model\.)?layers\.(\d+)\.")

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


def is_llama_config(hf: dict) -> bool:
    """True when a Hugging Face ``config.json`` dict is a Llama-family model gptlab holds."""
    return hf.get("model_type") in MODEL_TYPES


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


def check_hf_llama_shapes(shapes: dict[str, tuple[int, ...]], config: GPTConfig, source: str, config_path: str | Path = "config.json") -> None:
    """Check ``transformers`` Llama/Qwen2 tensor ``shapes`` (name -> shape, e.g. from safetensors
    headers) against ``config`` without allocating the model; GptlabError names the mismatch.

    The layer count (``num_hidden_layers`` of ``config_path`` against the ``model.layers.N``
    indices) comes first, so an absurd config fails before anything grows with it; then names
    and shapes against a model built on the meta device.
    """
    from gptlab.checkpoint import check_layer_count, check_shapes

    check_layer_count(shapes, _LAYER_INDEX, config.n_layers, "num_hidden_layers", source, config_path)
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    try:
        ours = from_hf_state_dict(meta, config)
    except RuntimeError as e:  # torch.cat of q/k/v or gate/up with mismatched widths
        raise GptlabError(
            f"{source}: q/k/v or gate/up projections do not fit together ({str(e).splitlines()[0]}); the config and the weights disagree"
        ) from None
    check_shapes(config, {k: tuple(v.shape) for k, v in ours.items()}, source, config_path)


def gpt_from_hf(state: dict[str, torch.Tensor], hf_config: dict, source: str = "Hugging Face state dict") -> GPT:
    """Return a GPT holding a ``transformers`` Llama/Qwen2 state dict, shaped by its ``config.json`` dict.

    Names and shapes are checked against the config before the model is built."""
    from gptlab.checkpoint import load_state

    config = config_from_hf(hf_config)
    check_hf_llama_shapes({k: tuple(v.shape) for k, v in state.items()}, config, source)
    model = GPT(config)
    load_state(model, from_hf_state_dict(state, config), source)
    return model


def load_hf_llama_dir(folder: str | Path) -> GPT:
    """Return a GPT from a Hugging Face Llama/Qwen2 folder: ``config.json`` and ``model.safetensors``
    (one file or ``model.safetensors.index.json`` shards).

    The safetensors headers are checked against ``config.json`` (layer count first) before any
    tensor is read or the model built; GptlabError (one line) names the file and the fix."""
    from gptlab.checkpoint import load_tensors, read_shapes

    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
        config = config_from_hf(hf_config)
    except FileNotFoundError:
        raise GptlabError(f"{config_path}: not found; a Hugging Face folder needs config.json beside the weights") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptlabError(f"{config_path}: not valid JSON ({e}); fix or re-download it") from None
    except KeyError as e:
        raise GptlabError(f"{config_path}: key {e.args[0]!r} is missing; is this a Llama/Qwen2 config.json?") from None
    except TypeError as e:
        raise GptlabError(f"{config_path}: a shape key has the wrong type ({e}); fix config.json") from None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise GptlabError(f"{index}: not a safetensors index ({e}); re-download it") from None
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        raise GptlabError(f"{folder}: no model.safetensors (or its index) found; download the safetensors weights")
    shapes = {k: v for f in files for k, v in read_shapes(f).items()}
    config_source = str(files[0]) if len(files) == 1 else str(index)
    check_hf_llama_shapes(shapes, config, config_source, config_path)
    state = {k: v for f in files for k, v in load_tensors(f).items()}
    model = GPT(config)
    from gptlab.checkpoint import load_state

    load_state(model, from_hf_state_dict(state, config), str(folder))
    return model


def export_hf_llama(model: GPT, folder: str | Path, bos_token_id: int | None = None, eos_token_id: int | None = None, tokenizer=None) -> Path:
    """Write ``model`` as ``model.safetensors`` + ``config.json`` that
    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads (Llama or Qwen2); return the folder.

    With ``tokenizer`` (a gptlab tokenizer) the folder is complete for ``AutoTokenizer`` and
    ``pipeline``: ``tokenizer.json``, ``tokenizer_config.json`` (chat template included) and
    ``generation_config.json``; its bos/eos ids fill ``config.json`` where not given.
    """
    from gptlab.convert.hf_tokenizer import special_ids, write_hf_tokenizer
    from gptlab.io import atomic_dir, write_json

    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config)
        ids = special_ids(tokenizer)
        bos_token_id = ids["bos_token_id"] if bos_token_id is None else bos_token_id
        eos_token_id = ids["eos_token_id"] if eos_token_id is None else eos_token_id
    with atomic_dir(folder) as tmp:
        save_file(to_hf_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", config_to_hf(model.config, bos_token_id, eos_token_id))
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config.context_length)
    return Path(folder)


def check_tokenizer_fits(tokenizer, config: GPTConfig) -> None:
    """GptlabError when the tokenizer has more ids than the model's ``vocab_size``."""
    if tokenizer.n_vocab > config.vocab_size:
        raise GptlabError(
            f"the tokenizer has {tokenizer.n_vocab} ids but the model's vocab_size is {config.vocab_size}; export with the tokenizer the model was trained with"
        )
