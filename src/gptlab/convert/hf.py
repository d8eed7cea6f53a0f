"""Hugging Face folders in and out: one loader and one exporter for every family gptlab holds.

A family (:data:`FAMILIES`) is its config map and its weight map, both ways: GPT-2
(:mod:`gptlab.convert.hf_gpt2`) and the Llama family, Llama and Qwen2
(:mod:`gptlab.convert.hf_llama`). Reading a folder checks the weights' headers against
``config.json`` (layer count first) before any tensor is read or the model built; writing one
adds the tokenizer files (:mod:`gptlab.convert.hf_tokenizer`). Needs only safetensors and torch
(``transformers`` is a test-only reference).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlab.checkpoint import EXPORT_FIX, check_layer_count, check_shapes, check_tokenizer_fits, load_state, load_tensors, read_shapes, write_safetensors
from gptlab.config import GPTConfig
from gptlab.convert import hf_gpt2, hf_llama
from gptlab.convert.hf_tokenizer import special_ids, write_hf_tokenizer
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, write_json
from gptlab.model import GPT, unpadded
from gptlab.tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class Family:
    """One Hugging Face model family: how its ``config.json`` and tensors map to gptlab's."""

    key: str  # gpt2 | llama
    name: str  # in messages: "is this a {name} config.json?"
    layers_key: str  # the config's name for the layer count
    layer_index: re.Pattern  # group 1: the layer index of a block's tensor name
    config_from_hf: Callable[[dict], GPTConfig]
    config_to_hf: Callable[[GPTConfig], dict]  # bos/eos ids filled with the family's defaults
    from_hf: Callable[[dict[str, torch.Tensor], GPTConfig], dict[str, torch.Tensor]]
    to_hf: Callable[[GPT], dict[str, torch.Tensor]]


GPT2 = Family(
    "gpt2", "GPT-2", "n_layer", hf_gpt2.LAYER_INDEX, hf_gpt2.config_from_hf, hf_gpt2.config_to_hf, hf_gpt2.from_hf_state_dict, hf_gpt2.to_hf_state_dict
)
LLAMA = Family(
    "llama",
    "Llama/Qwen2",
    "num_hidden_layers",
    hf_llama.LAYER_INDEX,
    hf_llama.config_from_hf,
    hf_llama.config_to_hf,
    hf_llama.from_hf_state_dict,
    hf_llama.to_hf_state_dict,
)
FAMILIES = {"gpt2": GPT2, **{t: LLAMA for t in hf_llama.MODEL_TYPES}}  # config.json's model_type -> family
MODEL_TYPES = tuple(FAMILIES)


def family_of_hf(hf_config: dict) -> Family:
    """Return the family of a Hugging Face ``config.json`` dict (``model_type`` llama or qwen2:
    the Llama family; anything else is read as GPT-2)."""
    return FAMILIES.get(hf_config.get("model_type"), GPT2)


def family_of(config: GPTConfig) -> Family:
    """Return the family a gptlab config exports to: Llama's when it has any of RMSNorm, RoPE or
    SwiGLU (its ``config_to_hf`` then insists on all three), else GPT-2's."""
    return LLAMA if config.norm == "rmsnorm" or config.positions == "rope" or config.mlp == "swiglu" else GPT2


def config_from_hf(hf_config: dict) -> GPTConfig:
    """Return the GPTConfig of a ``transformers`` ``config.json`` dict (GPT-2, Llama or Qwen2)."""
    return family_of_hf(hf_config).config_from_hf(hf_config)


def config_to_hf(config: GPTConfig) -> dict:
    """Return the ``transformers`` config dict (GPT2Config, LlamaConfig or Qwen2Config) of ``config``."""
    return family_of(config).config_to_hf(config)


def from_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Return gptlab tensors from a ``transformers`` state dict of ``config``'s family."""
    return family_of(config).from_hf(state, config)


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Return ``model``'s tensors in its family's ``transformers`` layout (contiguous copies)."""
    return family_of(model.config).to_hf(model)


def check_hf_shapes(shapes: dict[str, tuple[int, ...]], config: GPTConfig, source: str, config_path: str | Path = "config.json") -> None:
    """Check ``transformers`` tensor ``shapes`` (name -> shape, e.g. from safetensors headers)
    against ``config`` without allocating the model; GptlabError names the mismatch.

    The layer count (the family's key in ``config_path`` against the layer indices of the
    names) comes first, so an absurd config fails before anything grows with it; then names and
    shapes against a model built on the meta device.
    """
    family = family_of(config)
    check_layer_count(shapes, family.layer_index, config.n_layers, family.layers_key, source, config_path)
    meta = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    try:
        ours = family.from_hf(meta, config)
    except RuntimeError as e:  # torch.cat of q/k/v or gate/up with mismatched widths
        raise GptlabError(
            f"{source}: q/k/v or gate/up projections do not fit together ({str(e).splitlines()[0]}); the config and the weights disagree"
        ) from None
    check_shapes(config, {k: tuple(v.shape) for k, v in ours.items()}, source, config_path)


def gpt_from_hf(state: dict[str, torch.Tensor], hf_config: dict, source: str = "Hugging Face state dict") -> GPT:
    """Return a GPT holding a ``transformers`` state dict (GPT-2, Llama or Qwen2), shaped by its
    ``config.json`` dict. Names and shapes are checked against the config before the model is built."""
    config = config_from_hf(hf_config)
    check_hf_shapes({k: tuple(v.shape) for k, v in state.items()}, config, source)
    model = GPT(config)
    load_state(model, from_hf_state_dict(state, config), source)
    return model


def read_hf_config(folder: str | Path) -> tuple[dict, GPTConfig]:
    """Return ``(config.json as a dict, its GPTConfig)`` of a Hugging Face folder; GptlabError
    (one line, naming the file) when it is missing, not JSON or not a config gptlab holds."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise GptlabError(f"{config_path}: not found; a Hugging Face folder needs config.json beside the weights")
    hf_config = read_json(config_path, "a Hugging Face config.json")
    if not isinstance(hf_config, dict):
        raise GptlabError(f"{config_path}: holds a JSON {type(hf_config).__name__}, not an object; is this a Hugging Face config.json?")
    family = family_of_hf(hf_config)
    try:
        return hf_config, family.config_from_hf(hf_config)
    except KeyError as e:
        raise GptlabError(f"{config_path}: key {e.args[0]!r} is missing; is this a {family.name} config.json?") from None
    except TypeError as e:
        raise GptlabError(f"{config_path}: a shape key has the wrong type ({e}); fix config.json") from None
    except GptlabError as e:  # an impossible shape (a size the machine could never hold...): name the file
        raise GptlabError(f"{config_path}: {e}") from None


def load_hf_dir(folder: str | Path) -> GPT:
    """Return a GPT from a Hugging Face folder (GPT-2, Llama or Qwen2): ``config.json`` and
    ``model.safetensors`` (one file or ``model.safetensors.index.json`` shards) or
    ``pytorch_model.bin`` (read with ``weights_only=True``).

    Safetensors headers are checked against ``config.json`` (layer count first) before any
    tensor is read or the model built. GptlabError (one line) names the file and the fix for a
    missing, truncated or foreign weights file, a pickle holding more than tensors, or a config
    that does not fit the weights.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    _, config = read_hf_config(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = [folder / f for f in sorted(set(read_json(index, "a safetensors index")["weight_map"].values()))]
        except (KeyError, AttributeError, TypeError) as e:
            raise GptlabError(f"{index}: not a safetensors index ({e}); re-download it") from None
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif (folder / "pytorch_model.bin").exists():
        state = _load_pickled(folder / "pytorch_model.bin")
        check_hf_shapes({k: tuple(v.shape) for k, v in state.items()}, config, str(folder / "pytorch_model.bin"), config_path)
        files = []
    else:
        raise GptlabError(f"{folder}: neither model.safetensors (or its index) nor pytorch_model.bin found; download the safetensors weights")
    if files:
        shapes = {k: v for f in files for k, v in read_shapes(f).items()}
        check_hf_shapes(shapes, config, str(files[0]) if len(files) == 1 else str(index), config_path)
        state = {k: v for f in files for k, v in load_tensors(f).items()}
    model = GPT(config)
    load_state(model, from_hf_state_dict(state, config), str(folder))
    return model


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
    loads (GPT-2, Llama or Qwen2, by :func:`family_of`); return the folder.

    With ``tokenizer`` (a gptlab tokenizer, ``"gpt2"`` or a ``tokenizer.json`` path) the folder
    is complete for ``AutoTokenizer`` and ``pipeline("text-generation")``: ``tokenizer.json``,
    ``tokenizer_config.json`` (chat template where the tokenizer has one),
    ``generation_config.json`` (eos), and OpenAI's ``vocab.json``/``merges.txt`` for GPT-2; its
    bos/eos ids go to ``config.json``. Without it only ``model.safetensors`` + ``config.json``
    are written (a default eos id outside the vocabulary is left out).
    """
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    model = unpadded(model)  # the true vocabulary, whatever vocab_pad trained with
    family = family_of(model.config)
    hf_config = family.config_to_hf(model.config)
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, model.config.vocab_size, folder, EXPORT_FIX)
        ids = special_ids(tokenizer)
        hf_config["bos_token_id"], hf_config["eos_token_id"] = ids["bos_token_id"], ids["eos_token_id"]
    elif (hf_config.get("eos_token_id") or 0) >= model.config.vocab_size:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = None  # GPT-2's id would be outside the vocabulary
    with atomic_dir(folder) as tmp:
        write_safetensors(family.to_hf(model), tmp / "model.safetensors", {"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config.context_length)
    return Path(folder)
