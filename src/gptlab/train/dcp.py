"""Sharded training checkpoints with ``torch.distributed.checkpoint`` (DCP), and loading a
checkpoint of either format into a plain, DDP or FSDP model on any number of processes.

A sharded ``latest/`` (written under FSDP with several processes) holds ``dcp/`` (the model and
optimizer tensors, one ``.distcp`` file per rank and DCP's ``.metadata``), a full
``model.safetensors`` + ``config.json`` (gathered on rank 0, what :func:`gptlab.train.loop.publish`
copies) and ``state.json`` (step, data position, history, the torch, CUDA and python RNG states). A plain
``latest/`` (one process or DDP) is :func:`gptlab.checkpoint.save_model`'s training checkpoint.
DCP reshards on load, so either kind resumes on 1 or N processes, sharded or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from gptlab.checkpoint import TRAINABLE_WEIGHTS, load_tensors, load_training_state, load_weights, save_model
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, write_json
from gptlab.model import GPT
from gptlab.rng import capture_rng, restore_rng, rng_from_json, rng_to_json
from gptlab.train.runtime import Distributed

SHARDED = "dcp"  # the sub-folder of a sharded checkpoint


def is_sharded(folder: Path) -> bool:
    """True when ``folder`` is a sharded (DCP) training checkpoint."""
    return (Path(folder) / SHARDED / ".metadata").exists()


def save_sharded(folder: Path, model: GPT, optimizer, full: GPT | None, tokenizer: str, extra: dict, state: dict | None, ddp: Distributed) -> None:
    """Write a sharded training checkpoint to ``folder`` (a collective: every rank calls it).
    ``full``: rank 0's gathered model (written as ``model.safetensors``); ``state``: rank 0's
    JSON-able resume state. ``folder`` is replaced only once complete."""
    msd, osd = get_state_dict(model, optimizer)
    tensors = {"model": msd, "optim": osd["state"]}
    if not ddp.main:
        where = [None]
        dist.broadcast_object_list(where, src=0)
        dcp.save(tensors, checkpoint_id=Path(where[0]) / SHARDED)
        return
    with atomic_dir(folder) as tmp:
        dist.broadcast_object_list([str(tmp)], src=0)
        dcp.save(tensors, checkpoint_id=tmp / SHARDED)
        staged = save_model(tmp / ".model", full, tokenizer, extra)
        for f in staged.iterdir():
            shutil.move(str(f), tmp / f.name)
        staged.rmdir()
        rng_tensors, rng_meta = capture_rng()
        write_json(tmp / "state.json", {"format": "gptlab-dcp", **rng_to_json(rng_tensors), **rng_meta, **(state or {})})


def load_any(folder: Path, model: GPT, optimizer, sharded: bool) -> dict:
    """Restore ``model``, ``optimizer`` and the RNG states from the training checkpoint
    ``folder`` (sharded or plain) into a plain (``sharded`` False) or FSDP model; return ``state.json``."""
    folder = Path(folder)
    if is_sharded(folder):
        msd, osd = get_state_dict(model, optimizer)
        tensors = {"model": msd, "optim": osd["state"]}
        dcp.load(tensors, checkpoint_id=folder / SHARDED, no_dist=not dist.is_initialized())
        set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict={"state": tensors["optim"], "param_groups": osd["param_groups"]})
        meta = read_json(folder / "state.json", "a sharded checkpoint's state.json")
        restore_rng(rng_from_json(meta), meta)
        return meta
    if not sharded:
        load_weights(model, folder)
        return load_training_state(folder, optimizer)
    return _load_plain_into_sharded(folder, model, optimizer)


def _load_plain_into_sharded(folder: Path, model: GPT, optimizer) -> dict:
    """Load a plain training checkpoint (one process or DDP) into an FSDP model: every rank reads
    the full tensors and keeps its shard. The optimizer's tensors are keyed by parameter index,
    mapped to names through the optimizer's parameter order (the same in both modes)."""
    meta = read_json(folder / "state.json", "a training checkpoint's state.json")
    if not (folder / "model.safetensors").exists() and (folder / TRAINABLE_WEIGHTS).exists():
        raise GptlabError(f"{folder}: holds only the trained tensors (a LoRA run); resume it without FSDP (finetune.parallel) or remove it")
    weights = load_tensors(folder / "model.safetensors")
    if model.config.tie_embeddings:
        weights["head.weight"] = weights["tok_emb.weight"]
    tensors = load_tensors(folder / "state.safetensors")
    _, osd = get_state_dict(model, optimizer)
    names = [name for group in osd["param_groups"] for name in group["params"]]
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, entry = key.split(".", 2)
            if int(idx) >= len(names):
                raise GptlabError(f"{folder}: the optimizer state has more parameters than the model trains; remove the checkpoint or restore the params")
            state.setdefault(names[int(idx)], {})[entry] = value
    for idx, scalars in meta.get("optimizer_scalars", {}).items():
        state.setdefault(names[int(idx)], {}).update(scalars)
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict={"state": state, "param_groups": osd["param_groups"]}, options=options)
    restore_rng(tensors, meta)
    return meta
