"""litgpt checkpoint directories: from a Llama-architecture GGUF file (:func:`gguf_to_litgpt`) and
from a Llama-family gptlab model (:func:`export_litgpt`).

Built on the generic readers of :mod:`gptlab.convert.gguf` (metadata, vocabulary, tokenizer
rebuild, dequantisation, Q/K un-permutation): names are mapped onto litgpt's Llama layout
(fused, concatenated ``attn.qkv``), and the result is a directory ``litgpt
generate``/``finetune_lora``/``serve`` accept.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from gptlab.checkpoint import EXPORT_FIX, check_tokenizer_fits
from gptlab.convert.gguf import (
    GGUFVocab,
    build_tokenizer,
    dequantize_tensor,
    field_value,
    llama_unpermute,
    open_gguf,
    read_gguf_vocab,
    tensor_name,
)
from gptlab.convert.hf_tokenizer import write_hf_tokenizer
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.model import unpadded
from gptlab.progress import progress

DEFAULT_CONFIG = "SmolLM2-135M-Instruct"

# GGUF tensor (per block, gguf.MODEL_TENSOR) -> litgpt parameter name
_BLOCK_MAP = {
    gguf.MODEL_TENSOR.ATTN_NORM: "transformer.h.{bid}.norm_1.weight",
    gguf.MODEL_TENSOR.ATTN_OUT: "transformer.h.{bid}.attn.proj.weight",
    gguf.MODEL_TENSOR.FFN_NORM: "transformer.h.{bid}.norm_2.weight",
    gguf.MODEL_TENSOR.FFN_GATE: "transformer.h.{bid}.mlp.fc_1.weight",
    gguf.MODEL_TENSOR.FFN_UP: "transformer.h.{bid}.mlp.fc_2.weight",
    gguf.MODEL_TENSOR.FFN_DOWN: "transformer.h.{bid}.mlp.proj.weight",
}
_QKV = (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V)
_TOP_MAP = {
    gguf.MODEL_TENSOR.TOKEN_EMBD: "transformer.wte.weight",
    gguf.MODEL_TENSOR.OUTPUT_NORM: "transformer.ln_f.weight",
    gguf.MODEL_TENSOR.OUTPUT: "lm_head.weight",
}

__all__ = [
    "DEFAULT_CONFIG",
    "export_litgpt",
    "gguf_state_dict",
    "gguf_to_litgpt",
    "litgpt_config_of",
    "litgpt_state_dict",
    "litgpt_config",
    "tokenizer_config",
    "build_tokenizer",
    "read_gguf_vocab",
    "GGUFVocab",
]


def _check_config(reader: gguf.GGUFReader, config, path: Path) -> None:
    """Raise GptlabError where the GGUF hyperparameters disagree with the litgpt ``config``."""
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE, path)
    if arch != "llama":
        raise GptlabError(f"{path}: general.architecture={arch!r}; only 'llama' GGUF files map onto litgpt's Llama layout")
    if config.mlp_class_name != "LLaMAMLP" or config.norm_class_name != "RMSNorm" or config.bias:
        raise GptlabError(f"litgpt config {config.name!r} is not a plain Llama (LLaMAMLP, RMSNorm, no bias); choose a Llama-architecture config_name")
    L, A = gguf.Keys.LLM, gguf.Keys.Attention
    checks = [
        (L.BLOCK_COUNT, "n_layer", config.n_layer),
        (L.EMBEDDING_LENGTH, "n_embd", config.n_embd),
        (L.FEED_FORWARD_LENGTH, "intermediate_size", config.intermediate_size),
        (A.HEAD_COUNT, "n_head", config.n_head),
        (A.HEAD_COUNT_KV, "n_query_groups", config.n_query_groups),
    ]
    for key, name, want in checks:
        got = field_value(reader, key.format(arch=arch), path)
        if int(got) != int(want):
            raise GptlabError(
                f"{path}: {key.format(arch=arch)}={got} but litgpt config {config.name!r} has {name}={want}; pick the config_name matching this GGUF"
            )
    base = field_value(reader, gguf.Keys.Rope.FREQ_BASE.format(arch=arch), path, required=False)
    if base is not None and not np.isclose(float(base), float(config.rope_base)):
        raise GptlabError(f"{path}: {arch}.rope.freq_base={base} but litgpt config {config.name!r} has rope_base={config.rope_base}")
    eps = field_value(reader, A.LAYERNORM_RMS_EPS.format(arch=arch), path, required=False)
    if eps is not None and not np.isclose(float(eps), float(config.norm_eps), rtol=1e-3):
        raise GptlabError(f"{path}: {A.LAYERNORM_RMS_EPS.format(arch=arch)}={eps} but litgpt config {config.name!r} has norm_eps={config.norm_eps}")


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Return litgpt parameter name -> shape for a plain Llama ``config`` (what ``GPT(config)`` holds)."""
    e, hs = config.n_embd, config.head_size
    qkv_rows = (config.n_head + 2 * config.n_query_groups) * hs
    shapes = {
        "transformer.wte.weight": (config.padded_vocab_size, e),
        "transformer.ln_f.weight": (e,),
        "lm_head.weight": (config.padded_vocab_size, e),
    }
    for i in range(config.n_layer):
        shapes |= {
            f"transformer.h.{i}.norm_1.weight": (e,),
            f"transformer.h.{i}.attn.qkv.weight": (qkv_rows, e),
            f"transformer.h.{i}.attn.proj.weight": (e, config.n_head * hs),
            f"transformer.h.{i}.norm_2.weight": (e,),
            f"transformer.h.{i}.mlp.fc_1.weight": (config.intermediate_size, e),
            f"transformer.h.{i}.mlp.fc_2.weight": (config.intermediate_size, e),
            f"transformer.h.{i}.mlp.proj.weight": (e, config.intermediate_size),
        }
    return shapes


def gguf_state_dict(reader: gguf.GGUFReader, config, dtype: torch.dtype = torch.float32, path: Path | None = None) -> dict[str, torch.Tensor]:
    """Return the litgpt state dict (name -> tensor of ``dtype``) of a Llama GGUF file.

    Every GGUF tensor is dequantised to float32, Q/K rows are un-permuted, and Q, K, V are
    concatenated into ``attn.qkv.weight`` ((n_head + 2 * n_query_groups) * head_size, n_embd), as
    litgpt 0.5.13's ``copy_weights_hf_llama`` does. Without an ``output.weight`` (tied
    embeddings) ``lm_head.weight`` is the embedding. Raises GptlabError on a shape mismatch, a
    missing tensor or a GGUF tensor left unused.
    """
    path = path or Path("<gguf>")
    _check_config(reader, config, path)
    tensors = {t.name: t for t in reader.tensors}
    used: set[str] = set()
    expected = _expected_shapes(config)
    sd: dict[str, torch.Tensor] = {}

    def take(name: str, want: tuple[int, ...], target: str) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            raise GptlabError(f"{path}: GGUF tensor {name} is missing; needed for litgpt {target}")
        w = dequantize_tensor(t)
        if tuple(w.shape) != want:
            raise GptlabError(f"{path}: GGUF tensor {name} has shape {tuple(w.shape)} but litgpt config {config.name!r} needs {want} for {target}")
        used.add(name)
        bar.update(1)
        return w

    hs, nq, nkv = config.head_size, config.n_head, config.n_query_groups
    with progress(total=len(tensors), desc="dequantise GGUF", unit="tensor", leave=False) as bar:
        for kind, target in _TOP_MAP.items():
            name = tensor_name(kind)
            if kind == gguf.MODEL_TENSOR.OUTPUT and name not in tensors:
                continue
            sd[target] = take(name, expected[target], target).to(dtype)
        if "lm_head.weight" not in sd:  # tied embeddings: llama.cpp omits output.weight
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
        for i in range(config.n_layer):
            for kind, target in _BLOCK_MAP.items():
                target = target.format(bid=i)
                sd[target] = take(tensor_name(kind, i), expected[target], target).to(dtype)
            target = f"transformer.h.{i}.attn.qkv.weight"
            q = llama_unpermute(take(tensor_name(_QKV[0], i), (nq * hs, config.n_embd), target), nq, nq)
            k = llama_unpermute(take(tensor_name(_QKV[1], i), (nkv * hs, config.n_embd), target), nq, nkv)
            v = take(tensor_name(_QKV[2], i), (nkv * hs, config.n_embd), target)
            sd[target] = torch.cat((q, k, v)).to(dtype)
    unused = sorted(set(tensors) - used)
    if unused:
        raise GptlabError(f"{path}: GGUF tensors {', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''} have no place in litgpt config {config.name!r}")
    missing = set(expected) - set(sd)
    if missing:
        raise GptlabError(f"{path}: litgpt parameters {', '.join(sorted(missing)[:5])} got no GGUF tensor")
    return sd


def tokenizer_config(vocab: GGUFVocab, model_max_length: int) -> dict:
    """Return the ``tokenizer_config.json`` dict for the rebuilt tokenizer.

    ``add_bos_token`` is True when the bos token is ChatML's ``<|im_start|>``: litgpt's Tokenizer
    strips a leading bos from every encoded text when ``add_bos_token`` is false, which would cut
    the first ``<|im_start|>`` off a ChatML prompt (litgpt itself forces it on for SmolLM2-Instruct).
    """
    bos, eos = vocab.token(vocab.bos_id), vocab.token(vocab.eos_id)
    cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "add_bos_token": vocab.add_bos or bos == "<|im_start|>",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": vocab.token(vocab.unk_id),
        "pad_token": vocab.token(vocab.pad_id),
        "additional_special_tokens": [t for t in ("<|im_start|>", "<|im_end|>") if t in vocab.special],
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "vocab_size": len(vocab.tokens),
    }
    if vocab.chat_template:
        cfg["chat_template"] = vocab.chat_template
    return {k: v for k, v in cfg.items() if v is not None}


def litgpt_config(config_name):
    """Return ``litgpt.Config.from_name(config_name)``; a ``litgpt.Config`` passes through unchanged."""
    from litgpt import Config  # litgpt: the optional [litgpt] extra

    if isinstance(config_name, Config):
        return config_name
    try:
        return Config.from_name(config_name)
    except ValueError as e:
        raise GptlabError(f"litgpt has no config named {config_name!r}; pass a name from `litgpt download list` matching the GGUF") from e


def gguf_to_litgpt(gguf_path: str | Path, out_dir: str | Path, config_name: str = DEFAULT_CONFIG, dtype: torch.dtype = torch.float32) -> Path:
    """Convert a Llama GGUF file into a litgpt checkpoint directory; return ``out_dir``.

    ``config_name`` is a litgpt config name (or a ``litgpt.Config``, for tiny test models).
    Writes ``lit_model.pth`` (``torch.save`` of the state dict: tensors only, litgpt's own
    checkpoint format, which litgpt loads itself), ``model_config.yaml``
    (``litgpt.Config.from_name(config_name)`` as ``litgpt.utils.save_config`` writes it),
    ``tokenizer.json`` (rebuilt from the GGUF metadata), ``tokenizer_config.json``,
    ``generation_config.json`` and ``gguf_source.json`` (provenance). The folder appears
    complete or not at all. Takes about 15 s and 1.2 GB of memory for SmolLM2-135M on 2 cores.
    """
    from litgpt.utils import save_config  # litgpt: the optional [litgpt] extra

    gguf_path = Path(gguf_path)
    config = litgpt_config(config_name)
    config_name = config.name
    reader = open_gguf(gguf_path)
    vocab = read_gguf_vocab(reader)
    if len(vocab.tokens) != config.vocab_size:
        raise GptlabError(f"{gguf_path}: {len(vocab.tokens)} tokens but litgpt config {config_name!r} has vocab_size={config.vocab_size}")
    tokenizer = build_tokenizer(vocab)
    sd = gguf_state_dict(reader, config, dtype=dtype, path=gguf_path)
    with atomic_dir(out_dir) as tmp:
        torch.save(sd, tmp / "lit_model.pth")
        save_config(config, tmp)
        tokenizer.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", tokenizer_config(vocab, config.block_size))
        gen = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id, "pad_token_id": vocab.pad_id}
        write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        write_json(tmp / "gguf_source.json", {"gguf": gguf_path.name, "config_name": config_name, "dtype": str(dtype).removeprefix("torch.")})
    return Path(out_dir)


# gptlab (Llama family) -> litgpt parameter names, per block; attn.qkv is [q | k | v] in both
_FROM_GPTLAB_BLOCK = {
    "norm1.weight": "norm_1.weight",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "norm2.weight": "norm_2.weight",
    "mlp.proj.weight": "mlp.proj.weight",
}


def litgpt_config_of(config, name: str = "gptlab"):
    """Return the ``litgpt.Config`` of a Llama-family gptlab ``GPTConfig`` (Llama: no biases;
    Qwen2: qkv biases as litgpt's ``attn_bias``). GptlabError for GPT-2 configs (litgpt has no
    learned position embeddings) or MLP/projection biases."""
    from litgpt import Config  # litgpt: the optional [litgpt] extra

    if (config.norm, config.positions, config.mlp) != ("rmsnorm", "rope", "swiglu") or config.proj_bias or config.mlp_bias:
        raise GptlabError(
            f"model config norm={config.norm}, positions={config.positions}, mlp={config.mlp}, proj_bias={config.proj_bias}, "
            f"mlp_bias={config.mlp_bias}: litgpt export takes the Llama family (rmsnorm, rope, swiglu, no projection/MLP biases)"
        )
    return Config(
        name=name,
        block_size=config.context_length,
        vocab_size=config.vocab_size,
        padded_vocab_size=config.vocab_size,
        n_layer=config.n_layers,
        n_embd=config.emb_dim,
        n_head=config.n_heads,
        n_query_groups=config.kv_heads,
        head_size=config.head_dim,
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=False,
        attn_bias=config.qkv_bias,
        norm_class_name="RMSNorm",
        norm_eps=config.norm_eps,
        mlp_class_name="LLaMAMLP",
        intermediate_size=config.hidden_dim,
        rope_base=int(config.rope_base) if float(config.rope_base).is_integer() else config.rope_base,
    )


def litgpt_state_dict(model) -> dict[str, torch.Tensor]:
    """Return a Llama-family gptlab model's tensors under litgpt's names (contiguous copies):
    ``mlp.fc`` [gate | up] splits into ``fc_1``/``fc_2``; a tied head is copied into ``lm_head``."""
    c = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.ln_f.weight": sd["final_norm.weight"], "lm_head.weight": sd["head.weight"]}
    for i in range(c.n_layers):
        for ours, theirs in _FROM_GPTLAB_BLOCK.items():
            if f"blocks.{i}.{ours}" in sd:
                out[f"transformer.h.{i}.{theirs}"] = sd[f"blocks.{i}.{ours}"]
        gate, up = sd[f"blocks.{i}.mlp.fc.weight"].chunk(2)
        out[f"transformer.h.{i}.mlp.fc_1.weight"], out[f"transformer.h.{i}.mlp.fc_2.weight"] = gate, up
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_litgpt(model, tokenizer, out_dir: str | Path, name: str = "gptlab") -> Path:
    """Write a Llama-family gptlab ``model`` and its ``tokenizer`` as a litgpt checkpoint
    directory (``litgpt generate``/``finetune_lora``/``serve`` and ``litgpt.GPT`` load it); return it.

    Files: ``lit_model.pth`` (``torch.save`` of tensors only: litgpt's own format),
    ``model_config.yaml`` (:func:`litgpt_config_of`, as ``litgpt.utils.save_config`` writes it),
    ``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``. The folder appears
    complete or not at all.
    """
    from litgpt.utils import save_config  # litgpt: the optional [litgpt] extra

    model = unpadded(model)  # the true vocabulary, whatever vocab_pad trained with
    config = litgpt_config_of(model.config, name)
    check_tokenizer_fits(tokenizer, model.config.vocab_size, out_dir, EXPORT_FIX)
    with atomic_dir(out_dir) as tmp:
        torch.save(litgpt_state_dict(model), tmp / "lit_model.pth")
        save_config(config, tmp)
        write_hf_tokenizer(tokenizer, tmp, model.config.context_length)
    return Path(out_dir)
