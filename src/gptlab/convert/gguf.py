"""GGUF (llama.cpp) in: dequantise a Llama-architecture GGUF file into a gptlab checkpoint.

The GGUF file is read with the ``gguf`` package (``GGUFReader``), every tensor is dequantised
with ``gguf.quants.dequantize`` to float32, llama.cpp's row permutation of the query and key
weights is undone (giving Hugging Face's Llama layout, which :mod:`gptlab.convert.hf_llama`
maps onto gptlab's), the model config is read from the ``llama.*`` metadata, and the tokenizer
is rebuilt from the ``tokenizer.ggml.*`` metadata with the ``tokenizers`` library.

:func:`gguf_to_gptlab` writes a gptlab checkpoint; the litgpt layout lives in
:mod:`gptlab.litgpt.checkpoint` (``gguf_to_litgpt``), built on the same readers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from gptlab.checkpoint import check_shapes, load_state, save_model
from gptlab.config import GPTConfig
from gptlab.convert.hf_llama import from_hf_state_dict
from gptlab.convert.model_card import CARD_KEY, card_from_gguf
from gptlab.errors import GptlabError
from gptlab.io import read_json
from gptlab.model import GPT
from gptlab.progress import progress
from gptlab.tokenizer import HFTokenizer, gpt2_bpe_dir

# llama.cpp's pre-tokenizer names (``tokenizer.ggml.pre``) -> does it split digits one by one
# before the GPT-2 byte-level regex? (llama.cpp's llama-vocab.cpp: SMOLLM/STARCODER use
# "\p{N}" first; "gpt-2"/"default" use the GPT-2 regex alone.)
_PRE_TOKENIZERS = {"smollm": True, "starcoder": True, "refact": True, "gpt-2": False, "default": False}

# GGUF tensor (gguf.MODEL_TENSOR) -> Hugging Face Llama parameter name ({bid}: the block)
HF_BLOCK_MAP = {
    gguf.MODEL_TENSOR.ATTN_NORM: "model.layers.{bid}.input_layernorm",
    gguf.MODEL_TENSOR.ATTN_Q: "model.layers.{bid}.self_attn.q_proj",
    gguf.MODEL_TENSOR.ATTN_K: "model.layers.{bid}.self_attn.k_proj",
    gguf.MODEL_TENSOR.ATTN_V: "model.layers.{bid}.self_attn.v_proj",
    gguf.MODEL_TENSOR.ATTN_OUT: "model.layers.{bid}.self_attn.o_proj",
    gguf.MODEL_TENSOR.FFN_NORM: "model.layers.{bid}.post_attention_layernorm",
    gguf.MODEL_TENSOR.FFN_GATE: "model.layers.{bid}.mlp.gate_proj",
    gguf.MODEL_TENSOR.FFN_UP: "model.layers.{bid}.mlp.up_proj",
    gguf.MODEL_TENSOR.FFN_DOWN: "model.layers.{bid}.mlp.down_proj",
}
HF_TOP_MAP = {
    gguf.MODEL_TENSOR.TOKEN_EMBD: "model.embed_tokens",
    gguf.MODEL_TENSOR.OUTPUT_NORM: "model.norm",
    gguf.MODEL_TENSOR.OUTPUT: "lm_head",
}


def tensor_name(kind: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    """Return the GGUF name of a weight, e.g. ``blk.3.attn_q.weight``."""
    return gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer stored in a GGUF file's metadata.

    ``tokens[i]`` is the byte-level string of id ``i``; ``merges`` are BPE merge pairs in rank
    order; ``special`` maps control/user-defined token strings to their ids; ``pre`` is
    llama.cpp's pre-tokenizer name; ids are None where the file does not set them.
    """

    tokens: list[str]
    merges: list[tuple[str, str]]
    token_types: list[int]
    special: dict[str, int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    pre: str
    add_bos: bool
    chat_template: str | None = field(default=None, repr=False)

    def token(self, idx: int | None) -> str | None:
        """Return the token string of id ``idx`` (None for None)."""
        return None if idx is None else self.tokens[idx]


def field_value(reader: gguf.GGUFReader, key: str, path: Path, required: bool = True):
    """Return the value of GGUF metadata ``key`` (None when absent and not ``required``)."""
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise GptlabError(f"{path}: GGUF metadata key {key!r} is missing; this file cannot be converted (is it a complete llama.cpp export?)")
        return None
    return f.contents()


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Return a ``GGUFReader`` over ``path`` (memory-mapped), or raise GptlabError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: no such GGUF file; run the download stage or fix the path")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise GptlabError(f"{path}: not a readable GGUF file ({e}); re-download it") from e


def read_gguf_vocab(path: str | Path | gguf.GGUFReader) -> GGUFVocab:
    """Return the BPE vocabulary in a GGUF file's ``tokenizer.ggml.*`` metadata (see :class:`GGUFVocab`).

    Raises GptlabError when the tokenizer is not a byte-level BPE (``tokenizer.ggml.model`` != gpt2).
    """
    reader = path if isinstance(path, gguf.GGUFReader) else open_gguf(path)
    where = Path(getattr(reader.data, "filename", None) or str(path))
    keys = gguf.Keys.Tokenizer
    model = field_value(reader, keys.MODEL, where)
    if model != "gpt2":
        raise GptlabError(f"{where}: tokenizer.ggml.model={model!r}; only byte-level BPE ('gpt2') tokenizers can be rebuilt")
    tokens = field_value(reader, keys.LIST, where)
    types = [int(t) for t in field_value(reader, keys.TOKEN_TYPE, where)]
    merges = []
    for m in field_value(reader, keys.MERGES, where):
        a, sep, b = m.partition(" ")
        if not sep or " " in b:
            raise GptlabError(f"{where}: tokenizer.ggml.merges entry {m!r} is not two tokens separated by one space")
        merges.append((a, b))
    special_types = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    special = {tok: i for i, (tok, t) in enumerate(zip(tokens, types)) if t in special_types}

    def opt_id(key: str) -> int | None:
        v = field_value(reader, key, where, required=False)
        return None if v is None else int(v)

    add_bos = field_value(reader, keys.ADD_BOS, where, required=False)
    return GGUFVocab(
        tokens=list(tokens),
        merges=merges,
        token_types=types,
        special=special,
        bos_id=opt_id(keys.BOS_ID),
        eos_id=opt_id(keys.EOS_ID),
        unk_id=opt_id(keys.UNK_ID),
        pad_id=opt_id(keys.PAD_ID),
        pre=str(field_value(reader, keys.PRE, where, required=False) or "default"),
        add_bos=bool(add_bos) if add_bos is not None else False,
        chat_template=field_value(reader, keys.CHAT_TEMPLATE, where, required=False),
    )


def build_tokenizer(vocab: GGUFVocab):
    """Return a ``tokenizers.Tokenizer`` (byte-level BPE) equivalent to the GGUF vocabulary.

    Pre-tokenizer: digits split one by one (for llama.cpp's ``smollm``/``starcoder`` types), then
    the GPT-2 regex with byte-level mapping; control/user-defined tokens become special added
    tokens with their GGUF ids.
    """

    if vocab.pre not in _PRE_TOKENIZERS:
        raise GptlabError(f"GGUF tokenizer.ggml.pre={vocab.pre!r} is not a pre-tokenizer gptlab can rebuild; known: {', '.join(sorted(_PRE_TOKENIZERS))}")
    index = {tok: i for i, tok in enumerate(vocab.tokens)}
    if len(index) != len(vocab.tokens):
        raise GptlabError("GGUF tokenizer.ggml.tokens holds duplicate tokens; the vocabulary cannot be rebuilt")
    tok = Tokenizer(models.BPE(vocab=index, merges=vocab.merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_TOKENIZERS[vocab.pre]:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = sorted(vocab.special.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    for t, i in specials:
        if tok.token_to_id(t) != i:
            raise GptlabError(f"GGUF special token {t!r}: rebuilt id {tok.token_to_id(t)} != GGUF id {i}")
    return tok


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """Return ``w`` (rows, ...) permuted as llama.cpp's ``convert_hf_to_gguf.py`` does for Q/K.

    Per head, rows [first half of rotary pairs | second half] become interleaved pairs;
    ``n_head_kv`` (when set and different) is the head count used, as for K.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """Return the inverse of :func:`llama_permute`: GGUF Q/K rows (rows, ...) back in Hugging Face/litgpt order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize_tensor(t) -> torch.Tensor:
    """Return a GGUF ``ReaderTensor`` as float32 in PyTorch order: GGUF shape [ne0, ne1] -> (ne1, ne0)."""
    try:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
        raise GptlabError(f"GGUF tensor {t.name}: quantisation {t.tensor_type.name} cannot be dequantised by the gguf package ({e})") from e
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    return torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)  # a copy: the reader memory-maps the file


def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974738e-06)."""
    return float(f"{float(value):.7g}")


def gguf_config(reader: gguf.GGUFReader, path: Path | None = None) -> GPTConfig:
    """Return the GPTConfig of a Llama or Qwen2 GGUF file from its ``<arch>.*`` metadata.

    Tied embeddings when the file has no ``output.weight``; the vocabulary size is the number
    of ``tokenizer.ggml.tokens``.
    """
    path = path or Path("<gguf>")
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE, path)
    if arch not in ("llama", "qwen2"):
        raise GptlabError(f"{path}: general.architecture={arch!r}; gptlab reads 'llama' and 'qwen2' GGUF files")
    L, A = gguf.Keys.LLM, gguf.Keys.Attention

    def get(key: str, default=None):
        v = field_value(reader, key.format(arch=arch), path, required=default is None)
        return default if v is None else v

    n_heads = int(get(A.HEAD_COUNT))
    n_kv = int(get(A.HEAD_COUNT_KV, n_heads))
    names = {t.name for t in reader.tensors}
    family = {"qkv_bias": arch == "qwen2", "proj_bias": False, "mlp_bias": False}
    return GPTConfig(
        vocab_size=len(field_value(reader, gguf.Keys.Tokenizer.LIST, path)),
        context_length=int(get(L.CONTEXT_LENGTH)),
        emb_dim=int(get(L.EMBEDDING_LENGTH)),
        n_heads=n_heads,
        n_kv_heads=None if n_kv == n_heads else n_kv,
        n_layers=int(get(L.BLOCK_COUNT)),
        mlp_hidden=int(get(L.FEED_FORWARD_LENGTH)),
        norm="rmsnorm",
        norm_eps=_f32(get(A.LAYERNORM_RMS_EPS, 1e-5)),
        positions="rope",
        rope_base=_f32(get(gguf.Keys.Rope.FREQ_BASE, 10000.0)),
        mlp="swiglu",
        tie_embeddings=tensor_name(gguf.MODEL_TENSOR.OUTPUT) not in names,
        **family,
    )


def gguf_hf_state_dict(reader: gguf.GGUFReader, config: GPTConfig, path: Path | None = None) -> dict[str, torch.Tensor]:
    """Return the GGUF tensors as a Hugging Face Llama/Qwen2 state dict (float32).

    Every tensor is dequantised; for ``llama`` files the Q/K rows are un-permuted (llama.cpp
    permutes them for its interleaved RoPE; Qwen2 files are not permuted). Raises GptlabError on
    a GGUF tensor with no Hugging Face name.
    """
    path = path or Path("<gguf>")
    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE, path)
    names: dict[str, tuple[str, gguf.MODEL_TENSOR | None]] = {}
    for kind, hf in HF_TOP_MAP.items():
        names[gguf.TENSOR_NAMES[kind]] = (hf, kind)
    for i in range(config.n_layers):
        for kind, hf in HF_BLOCK_MAP.items():
            names[gguf.TENSOR_NAMES[kind].format(bid=i)] = (hf.format(bid=i), kind)
    out: dict[str, torch.Tensor] = {}
    with progress(total=len(reader.tensors), desc="dequantise GGUF", unit="tensor", leave=False) as bar:
        for t in reader.tensors:
            stem, _, suffix = t.name.rpartition(".")
            if stem not in names or suffix not in ("weight", "bias"):
                raise GptlabError(f"{path}: GGUF tensor {t.name} has no place in a {arch} model of {config.n_layers} layers; is the file a plain Llama/Qwen2?")
            hf, kind = names[stem]
            w = dequantize_tensor(t)
            if arch == "llama" and kind == gguf.MODEL_TENSOR.ATTN_Q:
                w = llama_unpermute(w, config.n_heads)
            elif arch == "llama" and kind == gguf.MODEL_TENSOR.ATTN_K:
                w = llama_unpermute(w, config.n_heads, config.kv_heads)
            out[f"{hf}.{suffix}"] = w
            bar.update(1)
    return out


_GPT2_NAMES = {"attn_norm": "norm1", "attn_qkv": "attn.qkv", "attn_output": "attn.proj", "ffn_norm": "norm2", "ffn_up": "mlp.fc", "ffn_down": "mlp.proj"}
_GPT2_TOP = {"token_embd": "tok_emb", "position_embd": "pos_emb", "output_norm": "final_norm", "output": "head"}


def gguf_gpt2_state(reader: gguf.GGUFReader, path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """Return ``(config, gptlab state dict)`` of a ``gpt2`` GGUF file (llama.cpp's layout: fused
    ``attn_qkv``, biases everywhere, ``output`` tied when equal to ``token_embd``).

    Names and shapes are checked against the ``gpt2.*`` metadata (layer count first) before
    any tensor is dequantised."""

    def get(key: str):
        return field_value(reader, key.format(arch="gpt2"), path)

    L = gguf.Keys.LLM
    emb, ffn = int(get(L.EMBEDDING_LENGTH)), int(get(L.FEED_FORWARD_LENGTH))
    config = GPTConfig(
        vocab_size=len(field_value(reader, gguf.Keys.Tokenizer.LIST, path)),
        context_length=int(get(L.CONTEXT_LENGTH)),
        emb_dim=emb,
        n_heads=int(get(gguf.Keys.Attention.HEAD_COUNT)),
        n_layers=int(get(L.BLOCK_COUNT)),
        mlp_hidden=None if ffn == 4 * emb else ffn,
        norm_eps=_f32(get(gguf.Keys.Attention.LAYERNORM_EPS)),
    )
    names: dict[str, str] = {}
    for t in reader.tensors:
        stem, _, suffix = t.name.rpartition(".")
        block, _, part = stem.partition(".")[2].partition(".")
        if stem in _GPT2_TOP:
            names[t.name] = f"{_GPT2_TOP[stem]}.{suffix}"
        elif stem.startswith("blk.") and block.isdigit() and part in _GPT2_NAMES:
            names[t.name] = f"blocks.{block}.{_GPT2_NAMES[part]}.{suffix}"
        else:
            raise GptlabError(f"{path}: GGUF tensor {t.name} has no place in a gpt2 model; is the file a plain GPT-2?")
    shapes = {names[t.name]: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    check_shapes(config, shapes, str(path), f"{path} (gpt2.* metadata)")
    state = {names[t.name]: dequantize_tensor(t) for t in reader.tensors}
    if "head.weight" in state and not torch.equal(state["head.weight"], state["tok_emb.weight"]):
        config = GPTConfig(**{**config.to_dict(), "tie_embeddings": False})
    elif "head.weight" in state:
        del state["head.weight"]
    return config, state


def _is_gpt2_vocab(vocab: GGUFVocab) -> bool:
    """True when the GGUF vocabulary is GPT-2's BPE (then the checkpoint names the built-in ``gpt2``)."""
    if vocab.pre != "gpt-2" or len(vocab.tokens) < 50257 or vocab.tokens[50256] != "<|endoftext|>":
        return False
    encoder = read_json(gpt2_bpe_dir() / "encoder.json", "GPT-2's BPE vocabulary")
    unused = all(t == gguf.TokenType.UNUSED for t in vocab.token_types[50257:])
    return unused and vocab.tokens[:50257] == sorted(encoder, key=encoder.__getitem__)


def gguf_to_gptlab(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Convert a Llama/Qwen2 (or GPT-2, see :func:`gguf_gpt2_state`) GGUF file into a gptlab
    checkpoint folder; return ``out_dir``.

    Writes (via ``checkpoint.save_model``) ``model.safetensors`` (dequantised, ``dtype``),
    ``config.json`` (the GPTConfig read from the metadata, plus a ``source`` entry and the file's
    ``general.*`` name, basename, size label and license as ``model_card``,
    :func:`gptlab.convert.model_card.card_from_gguf`) and
    ``tokenizer.json`` (gptlab's :class:`~gptlab.tokenizer.HFTokenizer` wrapper: the rebuilt
    byte-level BPE, the chat template, ``eot_token`` = the GGUF eos and ``stop_tokens`` =
    eos + ``<|im_end|>``/``<|endoftext|>`` where present). The folder appears complete or not at all.
    """
    gguf_path = Path(gguf_path)
    reader = open_gguf(gguf_path)
    vocab = read_gguf_vocab(reader)
    if field_value(reader, gguf.Keys.General.ARCHITECTURE, gguf_path) == "gpt2":
        config, state = gguf_gpt2_state(reader, gguf_path)
    else:
        config = gguf_config(reader, gguf_path)
        state = from_hf_state_dict(gguf_hf_state_dict(reader, config, gguf_path), config)
    model = GPT(config)
    load_state(model, {k: v.to(dtype) for k, v in state.items()}, str(gguf_path))
    model = model.to(dtype)
    source = {"gguf": gguf_path.name, "dtype": str(dtype).removeprefix("torch."), "bos_token": vocab.bos_id, "add_bos": vocab.add_bos}
    extra = {"source": source, CARD_KEY: card_from_gguf(reader)}
    if _is_gpt2_vocab(vocab):
        return save_model(out_dir, model, tokenizer="gpt2", extra=extra)
    stops = [vocab.special[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab.special]
    tokenizer = HFTokenizer(build_tokenizer(vocab), vocab.chat_template, vocab.eos_id, stops)
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        tokenizer.save(tok_path)
        save_model(out_dir, model, tokenizer=tok_path, extra=extra)
    return Path(out_dir)
