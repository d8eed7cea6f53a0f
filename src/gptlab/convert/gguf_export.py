"""GGUF (llama.cpp) out: a gptlab model and its tokenizer as one ``.gguf`` file.

Written with the ``gguf`` package's ``GGUFWriter`` the way llama.cpp's ``convert_hf_to_gguf.py``
writes the same architectures:

- ``llama`` (the Llama family without biases) and ``qwen2`` (q/k/v biases only): ``token_embd``,
  ``blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}``,
  ``output_norm``, ``output`` (absent when tied). For ``llama`` the Q/K rows are permuted for
  llama.cpp's interleaved RoPE (:func:`gptlab.convert.gguf.llama_permute`); ``qwen2`` files are not.
- ``gpt2``: ``token_embd``, ``position_embd``, ``blk.N.{attn_norm, attn_qkv, attn_output,
  ffn_norm, ffn_up, ffn_down}`` with biases, ``output_norm`` and ``output`` (always written, as
  llama.cpp's converter does for GPT-2's tied head).

Metadata: the ``<arch>.*`` hyperparameters, and the tokenizer as ``tokenizer.ggml.*`` (model
``gpt2`` = byte-level BPE: tokens, token types, merges, bos/eos ids, pre-tokenizer name ``gpt-2``
or ``smollm`` when digits are split one by one) plus the chat template. Token lists shorter than
the model's vocabulary are padded with ``[PAD<i>]`` (type UNUSED), as llama.cpp does.

``dtype``: ``f32`` (exact), ``f16`` or ``q8_0`` for the 2-D weights (rows whose length is not a
multiple of 32 fall back to f16 under q8_0); norms, biases and GPT-2's position embeddings stay
f32 (llama.cpp's converter forces ``position_embd`` to F32 too).

``general.*``: the model card (:mod:`gptlab.convert.model_card`: name, basename, finetune,
organization, size label, license, base models) and ``general.quantization_version``, written on
every file as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from gptlab.config import GPTConfig
from gptlab.convert.gguf import llama_permute, tensor_name
from gptlab.convert.model_card import export_card, write_card
from gptlab.errors import GptlabError
from gptlab.io import atomic_path, read_json
from gptlab.model import GPT, unpadded
from gptlab.tokenizer import GPT2Tokenizer, HFTokenizer, Tokenizer, gpt2_bpe_dir

DTYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
T = gguf.MODEL_TENSOR
_LLAMA_BLOCK = {
    "norm1.weight": T.ATTN_NORM,
    "attn.proj.weight": T.ATTN_OUT,
    "norm2.weight": T.FFN_NORM,
    "mlp.proj.weight": T.FFN_DOWN,
}
_KEEP_F32 = {tensor_name(T.POS_EMBD)}  # llama.cpp's converter never quantises these
_GPT2_BLOCK = {"norm1": T.ATTN_NORM, "attn.qkv": T.ATTN_QKV, "attn.proj": T.ATTN_OUT, "norm2": T.FFN_NORM, "mlp.fc": T.FFN_UP, "mlp.proj": T.FFN_DOWN}


@dataclass
class VocabOut:
    """A byte-level BPE vocabulary as GGUF stores it (see :func:`gguf_vocab`)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int
    chat_template: str | None = field(default=None, repr=False)


def architecture(config: GPTConfig) -> str:
    """Return the GGUF architecture of ``config``: ``gpt2``, ``llama`` or ``qwen2``; GptlabError
    for a mix llama.cpp has no architecture for."""
    parts = (config.norm, config.positions, config.mlp)
    if parts == ("layernorm", "learned", "gelu") and config.qkv_bias and config.proj_bias and config.mlp_bias:
        return "gpt2"
    if parts == ("rmsnorm", "rope", "swiglu") and not config.proj_bias and not config.mlp_bias:
        return "qwen2" if config.qkv_bias else "llama"
    raise GptlabError(
        f"model config norm={config.norm}, positions={config.positions}, mlp={config.mlp}, qkv_bias={config.qkv_bias}, "
        f"proj_bias={config.proj_bias}, mlp_bias={config.mlp_bias} is no GGUF architecture; GGUF export takes GPT-2, Llama (no biases) or Qwen2 (qkv biases)"
    )


def _gpt2_vocab() -> VocabOut:
    folder = gpt2_bpe_dir()
    encoder = read_json(folder / "encoder.json", "GPT-2's BPE vocabulary")
    tokens = [t for t, _ in sorted(encoder.items(), key=lambda kv: kv[1])]
    merges = [line for line in (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if line]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    types[encoder["<|endoftext|>"]] = int(gguf.TokenType.CONTROL)
    return VocabOut(tokens, types, merges, "gpt-2", encoder["<|endoftext|>"], encoder["<|endoftext|>"])


def _hf_vocab(tok: HFTokenizer) -> VocabOut:
    data = json.loads(tok.tokenizer.to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = kinds[-1:] == ["ByteLevel"] and steps[-1].get("use_regex", True) and not steps[-1].get("add_prefix_space", False)
    if model.get("type") != "BPE" or not byte_level or kinds[:-1] not in ([], ["Digits"]) or (kinds[:-1] and not steps[0].get("individual_digits")):
        raise GptlabError(
            f"tokenizer: a {model.get('type')} model with pre-tokenizers {kinds} has no llama.cpp equivalent; "
            "GGUF export takes byte-level BPE (GPT-2 regex, optionally after single-digit splitting)"
        )
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if sorted(vocab.values()) != list(range(len(tokens))):
        raise GptlabError("tokenizer: its ids are not 0..n-1 without gaps; GGUF stores the vocabulary as a list")
    added = tok.tokenizer.get_added_tokens_decoder()
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for i, t in added.items():
        types[i] = int(gguf.TokenType.CONTROL if t.special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:  # llama.cpp refuses a BPE vocabulary without merges ("cannot find tokenizer merges")
        raise GptlabError(
            "tokenizer: a byte-level BPE without merges (tokenize.tokenizer: char) has no GGUF form: llama.cpp needs tokenizer.ggml.merges "
            "and GGUF cannot store an empty list; export this model as a Hugging Face folder (--to hf), or pretrain with tokenize.tokenizer: bpe"
        )
    # no bos is known here: <|endoftext|> where present, else the eos (add_bos stays false, so
    # llama.cpp never prepends it; readers such as transformers' need some bos id)
    bos = vocab.get("<|endoftext|>", tok.eot_token)
    return VocabOut(tokens, types, merges, "smollm" if kinds[:-1] else "gpt-2", bos, tok.eot_token, tok.chat_template)


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> VocabOut:
    """Return ``tokenizer`` as GGUF's byte-level BPE vocabulary, padded to ``vocab_size`` tokens.

    GptlabError for a word-level SimpleTokenizer (llama.cpp has no such model) or a tokenizer
    larger than the model's vocabulary."""
    if isinstance(tokenizer, GPT2Tokenizer) and tokenizer.name == "gpt2":
        out = _gpt2_vocab()
    elif isinstance(tokenizer, HFTokenizer):
        out = _hf_vocab(tokenizer)
    else:
        raise GptlabError(
            f"tokenizer {tokenizer.name!r} is not a byte-level BPE; "
            "GGUF export takes gpt2 or a Hugging Face BPE tokenizer (train one with tokenize.tokenizer: bpe)"
        )
    if len(out.tokens) > vocab_size:
        raise GptlabError(
            f"the tokenizer has {len(out.tokens)} tokens but the model's vocab_size is {vocab_size}; export with the tokenizer the model was trained with"
        )
    for i in range(len(out.tokens), vocab_size):
        out.tokens.append(f"[PAD{i}]")
        out.token_types.append(int(gguf.TokenType.UNUSED))
    return out


def _tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """Return GGUF name -> float32 tensor (PyTorch order) for ``model`` under ``arch``."""
    c = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {tensor_name(T.TOKEN_EMBD): sd["tok_emb.weight"], tensor_name(T.OUTPUT_NORM): sd["final_norm.weight"]}
    if arch == "gpt2":
        out[tensor_name(T.POS_EMBD)] = sd["pos_emb.weight"]
        out["output_norm.bias"] = sd["final_norm.bias"]
        out[tensor_name(T.OUTPUT)] = sd["head.weight"]
        for i in range(c.n_layers):
            for ours, kind in _GPT2_BLOCK.items():
                stem = gguf.TENSOR_NAMES[kind].format(bid=i)
                out[f"{stem}.weight"], out[f"{stem}.bias"] = sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"]
        return out
    if not c.tie_embeddings:
        out[tensor_name(T.OUTPUT)] = sd["head.weight"]
    q_rows, kv_rows = c.emb_dim, c.kv_heads * c.head_dim
    for i in range(c.n_layers):
        pre = f"blocks.{i}."
        for ours, kind in _LLAMA_BLOCK.items():
            out[tensor_name(kind, i)] = sd[pre + ours]
        gate, up = sd[pre + "mlp.fc.weight"].chunk(2)
        out[tensor_name(T.FFN_GATE, i)], out[tensor_name(T.FFN_UP, i)] = gate, up
        for suffix in ("weight", "bias") if c.qkv_bias else ("weight",):
            q, k, v = sd[f"{pre}attn.qkv.{suffix}"].split([q_rows, kv_rows, kv_rows])
            if arch == "llama":
                q, k = llama_permute(q, c.n_heads), llama_permute(k, c.n_heads, c.kv_heads)
            for kind, t in zip((T.ATTN_Q, T.ATTN_K, T.ATTN_V), (q, k, v)):
                out[f"{gguf.TENSOR_NAMES[kind].format(bid=i)}.{suffix}"] = t
    return out


def _encode(name: str, t: torch.Tensor, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """Return the array to write for tensor ``name`` and its raw GGML type (None: the array's own float type)."""
    arr = np.ascontiguousarray(t.numpy(), dtype=np.float32)
    if arr.ndim < 2 or dtype == "f32" or name in _KEEP_F32:
        return arr, None
    if dtype == "q8_0" and arr.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return arr.astype(np.float16), None


def export_gguf(model: GPT, tokenizer: Tokenizer, path: str | Path, dtype: str = "f32", card: dict | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as one GGUF file at ``path`` (written to a temporary
    name, renamed into place); return the path. ``dtype``: ``f32`` | ``f16`` | ``q8_0``.
    ``card``: the model card for ``general.*`` (:func:`gptlab.convert.model_card.export_card`:
    the name falls back to the file's stem, the size label to the parameter count's).

    GptlabError for an architecture or tokenizer GGUF cannot hold (see :func:`architecture`,
    :func:`gguf_vocab`)."""
    if dtype not in DTYPES:
        raise GptlabError(f"GGUF dtype={dtype!r} is unknown; choose among {', '.join(DTYPES)}")
    model = unpadded(model)  # the true vocabulary, whatever vocab_pad trained with
    c = model.config
    arch = architecture(c)
    vocab = gguf_vocab(tokenizer, c.vocab_size)
    path = Path(path)
    card = export_card(card or {}, model.num_parameters(), path.stem)
    with atomic_path(path) as tmp:
        _write(model, arch, vocab, dtype, card, str(tmp))
    return path


def _write(model: GPT, arch: str, vocab: VocabOut, dtype: str, card: dict, tmp: str) -> None:
    c = model.config
    w = gguf.GGUFWriter(tmp, arch)
    write_card(w, card)
    w.add_file_type(int(DTYPES[dtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c.context_length)
    w.add_embedding_length(c.emb_dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    if arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
    else:
        w.add_head_count_kv(c.kv_heads)
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_rope_freq_base(c.rope_base)
        w.add_rope_dimension_count(c.head_dim)
        w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    w.add_add_bos_token(False)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)
    for tname, t in _tensors(model, arch).items():
        arr, raw = _encode(tname, t, dtype)
        w.add_tensor(tname, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
