"""Checkpoint directories: ``model.safetensors`` + ``config.json`` (+ tokenizer), written atomically.

``config.json`` holds ``{"format": "gptlab", "model": GPTConfig, "tokenizer": spec}`` where
spec is ``"gpt2"`` or ``"tokenizer.json"`` (a SimpleTokenizer saved beside the weights).
Tied weights are stored once (``head.weight`` is omitted when tied). No pickles anywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, write_json
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizer import Tokenizer, load_tokenizer

FORMAT = "gptlab"


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """Return the model's tensors to save: contiguous, tied ``head.weight`` left out."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    return state


def save_model(folder: str | Path, model: GPT, tokenizer: str | Path = "gpt2", extra: dict | None = None) -> Path:
    """Write ``model`` to ``folder`` (replacing it only once complete); return the folder.

    ``tokenizer``: ``"gpt2"`` or the path of a SimpleTokenizer JSON, copied in as
    ``tokenizer.json``. ``extra`` adds JSON-able entries to ``config.json``.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        save_file(model_state(model), tmp / "model.safetensors", metadata={"format": FORMAT})
        spec = "gpt2"
        if str(tokenizer) != "gpt2":
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            spec = "tokenizer.json"
        write_json(tmp / "config.json", {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": spec, **(extra or {})})
    return folder


def read_config(folder: str | Path) -> dict:
    """Return the parsed ``config.json`` of a checkpoint folder (GptlabError if absent or foreign)."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GptlabError(f"{path}: not found; is {folder} a gptlab checkpoint folder?") from None
    except json.JSONDecodeError as e:
        raise GptlabError(f"{path}: not valid JSON ({e})") from None
    return data


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """Return ``(model, tokenizer)`` from a gptlab checkpoint folder, or a Hugging Face GPT-2
    folder (``config.json`` with ``model_type: gpt2``). The model is in eval mode on ``device``."""
    folder = Path(folder)
    data = read_config(folder)
    if data.get("model_type") == "gpt2":
        from gptlab.convert.hf import load_hf_dir

        return load_hf_dir(folder).to(device).eval(), load_tokenizer("gpt2")
    if data.get("format") != FORMAT:
        raise GptlabError(f"{folder / 'config.json'}: neither a gptlab checkpoint (format: gptlab) nor a Hugging Face GPT-2 config")
    model = GPT(GPTConfig.from_dict(data["model"]))
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise GptlabError(f"{weights}: not found; the checkpoint is incomplete")
    load_state(model, load_file(weights), str(weights))
    spec = data.get("tokenizer", "gpt2")
    return model.to(device).eval(), load_tokenizer(spec if spec == "gpt2" else folder / spec)


def load_state(model: GPT, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``, checking names and shapes; GptlabError names any mismatch."""
    expected = model_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - {"head.weight"})
    if missing or unexpected:
        raise GptlabError(f"{source}: tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise GptlabError(f"{source}: {name} has shape {tuple(state[name].shape)}, the config needs {tuple(tensor.shape)}")
    model.load_state_dict({**state, "head.weight": state.get("head.weight", state["tok_emb.weight"])} if model.config.tie_embeddings else state)
