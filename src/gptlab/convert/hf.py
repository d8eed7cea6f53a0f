"""Hugging Face interop: GPT-2 state dicts in the ``transformers`` layout, in and out; the
entry points (:func:`load_hf_dir`, :func:`export_hf`) also dispatch the Llama family to
:mod:`gptlab.convert.hf_llama` and write the tokenizer (:mod:`gptlab.convert.hf_tokenizer`).

``transformers`` stores GPT-2's linear layers as ``Conv1D`` with weights of shape
(in, out), the transpose of ``nn.Linear``. This module maps names and transposes; it needs
only safetensors (``transformers`` itself is a test-only reference).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.model import GPT
from gptlab.tokenizer import Tokenizer, load_tokenizer

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


def gpt_from_hf(state: dict[str, torch.Tensor], hf_config: dict, source: str = "Hugging Face state dict") -> GPT:
    """Return a GPT holding a ``transformers`` GPT-2 state dict, shaped by its ``config.json`` dict.

    The tensors' names and shapes are checked against the config before the model is built."""
    from gptlab.checkpoint import load_state

    config = config_from_hf(hf_config)
    check_hf_shapes({k: tuple(v.shape) for k, v in state.items()}, config, source)
    model = GPT(config)
    load_state(model, from_hf_state_dict(state, config), source)
    return model


_LAYER_INDEX = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")


def check_hf_shapes(shapes: dict[str, tuple[int, ...]], config: GPTConfig, source: str, config_path: str | Path = "config.json") -> None:
    """Check ``transformers`` GPT-2 tensor ``shapes`` (name -> shape, e.g. from a safetensors
    header) against ``config`` without allocating the model; GptlabError names the mismatch.

    The layer count (``n_layer`` of ``config_path`` against the ``h.N`` indices) comes first,
    so an absurd config fails before anything grows with it; then names and shapes against a
    model built on the meta device.
    """
    from gptlab.checkpoint import check_layer_count, check_shapes

    check_layer_count(shapes, _LAYER_INDEX, config.n_layers, "n_layer", source, config_path)
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    ours = from_hf_state_dict(meta, config)
    check_shapes(config, {k: tuple(v.shape) for k, v in ours.items()}, source, config_path)


def load_hf_dir(folder: str | Path) -> GPT:
    """Return a GPT from a Hugging Face GPT-2 folder: ``config.json`` and ``model.safetensors``
    (or ``pytorch_model.bin``, read with ``weights_only=True``); a Llama/Qwen2 folder goes to
    :func:`gptlab.convert.hf_llama.load_hf_llama_dir`.

    A safetensors file's header is checked against ``config.json`` before any tensor is read
    or the model built. GptlabError (one line) for a missing, truncated or foreign weights
    file, a pickle holding more than tensors, or a config that does not fit the weights.
    """
    from gptlab.checkpoint import load_tensors, read_shapes

    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise GptlabError(f"{config_path}: not found; a Hugging Face folder needs config.json beside the weights") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptlabError(f"{config_path}: not valid JSON ({e}); fix or re-download it") from None
    from gptlab.convert.hf_llama import is_llama_config, load_hf_llama_dir

    if isinstance(hf_config, dict) and is_llama_config(hf_config):
        return load_hf_llama_dir(folder)
    try:
        config = config_from_hf(hf_config)
    except KeyError as e:
        raise GptlabError(f"{config_path}: key {e.args[0]!r} is missing; is this a GPT-2 config.json?") from None
    except TypeError as e:
        raise GptlabError(f"{config_path}: a shape key has the wrong type ({e}); fix config.json") from None
    weights = folder / "model.safetensors"
    if weights.exists():
        check_hf_shapes(read_shapes(weights), config, str(weights), config_path)
        state = load_tensors(weights)
    elif (folder / "pytorch_model.bin").exists():
        state = _load_pickled(folder / "pytorch_model.bin")
        check_hf_shapes({k: tuple(v.shape) for k, v in state.items()}, config, str(folder / "pytorch_model.bin"), config_path)
    else:
        raise GptlabError(f"{folder}: neither model.safetensors nor pytorch_model.bin found")
    return gpt_from_hf(state, hf_config, str(folder))


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``pytorch_model.bin`` with ``weights_only=True``; GptlabError (one line) when torch
    refuses the pickle (it holds more than tensors) or cannot read the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else "not a plain tensor pickle"
        raise GptlabError(
            f"{path}: refused: the pickle holds more than tensors (torch.load weights_only=True: {why[:160]}); "
            "get model.safetensors for this model instead, or convert the .bin only if you trust its source"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GptlabError(f"{path}: not a readable PyTorch checkpoint ({why[:160]}); download it again or use model.safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GptlabError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors; use model.safetensors")
    return state


def export_hf(model: GPT, folder: str | Path, tokenizer: Tokenizer | str | Path | None = None) -> Path:
    """Write ``model`` as a Hugging Face folder ``transformers.AutoModelForCausalLM.from_pretrained``
    loads (GPT-2 here; the Llama family through :func:`gptlab.convert.hf_llama.export_hf_llama`);
    return the folder.

    With ``tokenizer`` (a gptlab tokenizer, ``"gpt2"`` or a ``tokenizer.json`` path) the folder
    is complete for ``AutoTokenizer`` and ``pipeline("text-generation")``: ``tokenizer.json``,
    ``tokenizer_config.json`` (chat template where the tokenizer has one),
    ``generation_config.json`` (eos), and OpenAI's ``vocab.json``/``merges.txt`` for GPT-2.
    Without it only ``model.safetensors`` + ``config.json`` are written.
    """
    from gptlab.convert import hf_llama
    from gptlab.convert.hf_tokenizer import special_ids, write_hf_tokenizer

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if model.config.norm == "rmsnorm" or model.config.positions == "rope" or model.config.mlp == "swiglu":
        return hf_llama.export_hf_llama(model, folder, tokenizer=tokenizer)
    hf_config = config_to_hf(model.config)
    if tokenizer is not None:
        hf_llama.check_tokenizer_fits(tokenizer, model.config)
        ids = special_ids(tokenizer)
        hf_config["bos_token_id"], hf_config["eos_token_id"] = ids["bos_token_id"], ids["eos_token_id"]
    elif model.config.vocab_size <= 50256:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = None  # GPT-2's id would be outside the vocabulary
    with atomic_dir(folder) as tmp:
        save_file(to_hf_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config.context_length)
    return Path(folder)
