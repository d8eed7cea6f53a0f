"""Checkpoint directories: ``model.safetensors`` + ``config.json`` (+ tokenizer), written atomically.

``config.json`` holds ``{"format": "gptlab", "model": GPTConfig, "tokenizer": spec}`` where
spec is ``"gpt2"`` or ``"tokenizer.json"`` (a SimpleTokenizer saved beside the weights).
Tied weights are stored once (``head.weight`` is omitted when tied). No pickles anywhere.

A training checkpoint adds ``state.safetensors`` (optimizer moments, torch RNG states) and
``state.json`` (step, schedule position, data generator state, python RNG, history...), so a
resumed run continues bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, write_json
from gptlab.model import GPT
from gptlab.rng import capture_rng, restore_rng
from gptlab.tokenizer import Tokenizer, load_tokenizer

FORMAT = "gptlab"
# A checkpoint of a run that freezes part of the model (LoRA) holds only the trained tensors, in this file.
TRAINABLE_WEIGHTS = "trainable.safetensors"


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """Return the model's tensors to save: contiguous, tied ``head.weight`` left out."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    return state


def trainable_state(model: GPT) -> dict[str, torch.Tensor]:
    """Return the tensors of the parameters that require grad (a LoRA run: the adapter's), by state-dict name."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_model(
    folder: str | Path,
    model: GPT,
    tokenizer: str | Path | Tokenizer = "gpt2",
    extra: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict | None = None,
    trainable_only: bool = False,
) -> Path:
    """Write ``model`` to ``folder`` (replacing it only once complete); return the folder.

    ``tokenizer``: ``"gpt2"``, the path of a tokenizer JSON (copied in as ``tokenizer.json``) or
    a tokenizer object (GPT-2's is recorded by name, any other saved as ``tokenizer.json``). ``extra`` adds JSON-able entries to ``config.json``. With
    ``optimizer`` and ``train_state`` (JSON-able) it is a training checkpoint: the optimizer's
    tensors and the RNG states go to ``state.safetensors``, the rest to ``state.json``.
    ``trainable_only``: only the tensors that require grad go to ``trainable.safetensors`` (a
    LoRA run's checkpoint: the frozen base is the one the run loads; no ``model.safetensors``).
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        if trainable_only:
            write_safetensors(trainable_state(model), tmp / TRAINABLE_WEIGHTS)
        else:
            write_safetensors(model_state(model), tmp / "model.safetensors")
        spec = "gpt2"
        if not isinstance(tokenizer, (str, Path)):  # a tokenizer object: GPT-2's stays a name, any other is saved
            if tokenizer.name != "gpt2":
                tokenizer.save(tmp / "tokenizer.json")
                spec = "tokenizer.json"
        elif str(tokenizer) != "gpt2":
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            spec = "tokenizer.json"
        write_json(tmp / "config.json", {"format": FORMAT, "model": model.config.to_dict(), "tokenizer": spec, **(extra or {})})
        if optimizer is not None:
            tensors, meta = _training_state(optimizer)
            write_safetensors(tensors, tmp / "state.safetensors")
            write_json(tmp / "state.json", {**meta, **(train_state or {})})
    return folder


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` with ``metadata`` (default: gptlab's format); a full disk raises
    ``OSError(ENOSPC)`` naming ``path`` (safetensors reports it as a SafetensorError), which
    :func:`gptlab.io.atomic_dir` turns into one line."""
    try:
        save_file(tensors, path, metadata=metadata or {"format": FORMAT})
    except SafetensorError as e:
        text = str(e)
        if "code: 28" in text or "No space left" in text or "StorageFull" in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise GptlabError(f"{path}: cannot write the weights ({text.splitlines()[0] if text else type(e).__name__})") from None


def _training_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split the optimizer and RNG states into tensors and JSON."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    return tensors, {"optimizer_param_groups": opt["param_groups"], "optimizer_scalars": scalars, **rng_meta}


def load_training_state(folder: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore ``optimizer`` and the RNG states (torch, CUDA, python) from a training checkpoint; return
    ``state.json`` (step, data generator state, history...)."""
    folder = Path(folder)
    for name in ("state.json", "state.safetensors"):
        if not (folder / name).is_file():
            raise GptlabError(f"{folder}: not a training checkpoint ({name} missing); start without resume")
    meta = read_json(folder / "state.json", "a training checkpoint's state.json")
    tensors = load_file(folder / "state.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["optimizer_scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    restore_rng(tensors, meta)
    return meta


def read_config(folder: str | Path) -> dict:
    """Return the parsed ``config.json`` of a checkpoint folder (GptlabError if absent or foreign)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise GptlabError(f"{path}: not found; is {folder} a gptlab checkpoint folder?")
    return read_json(path, "a model folder's config.json")


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """Return ``(model, tokenizer)`` from a gptlab checkpoint folder, the model in eval mode on
    ``device`` (a Hugging Face or OpenAI folder: :func:`gptlab.convert.load_any.load_any`).

    The weights' header (names and shapes) is checked against ``config.json`` before the
    model is built, so an absurd config (a million layers) fails at once, naming the key.
    """
    folder = Path(folder)
    data = read_config(folder)
    if data.get("format") != FORMAT:
        raise GptlabError(f"{folder / 'config.json'}: not a gptlab checkpoint (format: gptlab); convert it first (gptlab convert --model {folder} --out DIR)")
    if not isinstance(data.get("model"), dict):
        raise GptlabError(f"{folder / 'config.json'}: key 'model' (the model config) is missing or not an object; save the checkpoint again")
    try:
        config = GPTConfig.from_dict(data["model"])
    except GptlabError as e:
        raise GptlabError(f"{folder / 'config.json'}: {e}") from None
    weights = folder / "model.safetensors"
    check_shapes(config, read_shapes(weights), str(weights), folder / "config.json")
    spec = data.get("tokenizer", "gpt2")
    tokenizer = load_tokenizer(spec if spec == "gpt2" else folder / spec)
    check_tokenizer_fits(tokenizer, config.vocab_size, folder)
    model = GPT(config)
    load_weights(model, folder)
    return model.to(device).eval(), tokenizer


EXPORT_FIX = "export with the tokenizer the model was trained with"
LOAD_FIX = "put the tokenizer the model was trained with in the folder (or train the model with this tokenizer's vocabulary)"


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, folder: str | Path, fix: str = LOAD_FIX) -> None:
    """GptlabError naming ``folder`` and ``fix`` when the tokenizer can produce an id (special
    tokens included) the model's embedding (``vocab_size`` rows) does not hold; loaders and
    exporters alike call it."""
    if tokenizer.max_id >= vocab_size:
        raise GptlabError(
            f"{folder}: the tokenizer's ids go up to {tokenizer.max_id} ({tokenizer.n_vocab:,} ids) but the model's vocab_size is {vocab_size:,}; {fix}"
        )


def load_weights(model: GPT, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into ``model`` (names and shapes checked); a folder with
    only ``trainable.safetensors`` (``save_model(trainable_only=True)``) loads those tensors into
    the model's parameters of the same names, the rest (the frozen base) left as loaded."""
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.exists() and (folder / TRAINABLE_WEIGHTS).exists():
        load_trainable(model, folder / TRAINABLE_WEIGHTS)
        return
    load_state(model, load_tensors(weights), str(weights))


def load_trainable(model: GPT, path: str | Path) -> None:
    """Copy the tensors of ``path`` into ``model``'s parameters of the same names; GptlabError names
    the file and the first tensor the model lacks or whose shape differs."""
    tensors = load_tensors(path)
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in params or tuple(params[name].shape) != tuple(value.shape):
            found = tuple(params[name].shape) if name in params else "no such parameter"
            raise GptlabError(f"{path}: {name} {tuple(value.shape)} does not fit the model ({found}); remove the checkpoint or restore the params")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


_DAMAGED = "is truncated or not a safetensors file ({}); copy, download or convert it again"


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Return ``{tensor name: shape}`` from a safetensors file's header, reading no tensor data.

    GptlabError names the file when it is missing, truncated or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: not found; the checkpoint is incomplete")
    check_data_size(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise GptlabError(f"{path}: {_DAMAGED.format(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Return every tensor of a safetensors file (CPU); GptlabError names a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: not found; the checkpoint is incomplete")
    check_data_size(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise GptlabError(f"{path}: {_DAMAGED.format(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None


def memory_limit() -> int:
    """Bytes this process may hold at most: the machine's physical memory, or the address-space
    limit (``ulimit -v``) when lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return limit if soft == resource.RLIM_INFINITY else min(limit, soft)


def check_data_size(path: Path) -> int:
    """Return the bytes of tensor data a safetensors file's header declares, read from the header
    alone; GptlabError naming the file when the header is damaged, declares more than the file
    holds, or more than :func:`memory_limit` (a crafted 4 TB header on a sparse file)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > min(size - 8, 100_000_000):  # safetensors caps headers at 100 MB
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise GptlabError(f"{path}: {_DAMAGED.format(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None
    if 8 + n + end > size:
        raise GptlabError(f"{path}: {_DAMAGED.format(f'the header declares {8 + n + end} bytes, the file holds {size}')}")
    if end > (limit := memory_limit()):
        raise GptlabError(
            f"{path}: its tensors take {end / 2**30:.1f} GiB, over the {limit / 2**30:.1f} GiB this process may use (memory or ulimit -v); "
            "load it on a larger machine, or check that the file is the model you meant"
        )
    return end


_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def check_layer_count(shapes: dict[str, tuple[int, ...]], pattern: re.Pattern, n_layers: int, key: str, source: str, config_path: str | Path) -> None:
    """GptlabError unless the tensor names in ``shapes`` hold exactly ``n_layers`` layer indices
    (``pattern``'s first group); ``key`` is the config's name for the count (``n_layers``,
    ``n_layer``, ``num_hidden_layers``). Cheap: an absurd config fails before anything is built."""
    layers = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
    if len(layers) != n_layers:
        raise GptlabError(
            f"{config_path}: {key}={n_layers} but {source} holds {len(layers)} layers; fix {key} in the config or pair it with the weights it came with"
        )


def check_shapes(config: GPTConfig, shapes: dict[str, tuple[int, ...]], source: str, config_path: str | Path = "config.json") -> None:
    """Check gptlab tensor ``shapes`` (name -> shape, e.g. from :func:`read_shapes`) against
    ``config`` without allocating the model; GptlabError names the file and the mismatch.

    First the number of layers (``config_path``'s ``n_layers`` against the ``blocks.N``
    indices in ``source``), so an absurd config fails before anything grows with it; then
    every name and shape against a model built on the meta device (no memory).
    """
    check_layer_count(shapes, _BLOCK_INDEX, config.n_layers, "n_layers", source, config_path)
    with torch.device("meta"):
        meta = GPT(config)
    _check_state(meta, shapes, source)


def _check_state(model: GPT, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """GptlabError naming ``source`` and the first missing / unexpected tensor or wrong shape."""
    expected = {k: tuple(v.shape) for k, v in model_state(model).items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected) - {"head.weight"})
    if missing or unexpected:
        raise GptlabError(f"{source}: tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise GptlabError(f"{source}: {name} has shape {tuple(shapes[name])}, the config needs {shape}; the config and the weights disagree")


def load_state(model: GPT, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``, checking names and shapes; GptlabError names any mismatch."""
    _check_state(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict({**state, "head.weight": state.get("head.weight", state["tok_emb.weight"])} if model.config.tie_embeddings else state)
