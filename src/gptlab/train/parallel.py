"""How the training loop spreads a model over processes: plain / DDP, or FSDP2 (``fully_shard``),
and activation checkpointing of the transformer blocks.

With one process both modes are plain single-process training. Under FSDP (several processes)
every block and then the whole model are sharded with ``torch.distributed.fsdp.fully_shard``;
rank 0 keeps a full, unsharded copy (``replica``) that is refreshed from the shards before
each evaluation or checkpoint, so evaluation, samples, ``best/`` and ``latest/model.safetensors``
are the same plain files as in the other modes.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from gptlab.checkpoint import save_model
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.params import LoopParams
from gptlab.train.dcp import load_any, save_sharded
from gptlab.train.runtime import Distributed


def apply_activation_checkpointing(model: GPT) -> GPT:
    """Recompute each transformer block's activations in the backward pass instead of keeping
    them (``torch.utils.checkpoint``, non-reentrant); only while training with gradients on, so
    evaluation and generation (KV cache) run as before. State-dict names are unchanged. Returns ``model``."""
    for block in model.blocks:
        if getattr(block, "_gptlab_checkpointed", False):
            continue
        plain = block.forward

        def forward(*args, _block=block, _plain=plain, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint_fn(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)

        block.forward = forward
        block._gptlab_checkpointed = True
    return model


class Parallel:
    """The parallel mode of one training run (``p.parallel`` over ``ddp.world`` processes).

    :meth:`prepare` wraps the model before the optimizer is made, :meth:`wrap` after it,
    :meth:`sync` says whether gradients are reduced in a micro-step, :meth:`view` returns the
    full model rank 0 evaluates and saves, :meth:`save` / :meth:`load` write and read ``latest/``.
    """

    def __init__(self, p: LoopParams, ddp: Distributed, device: torch.device, amp_dtype: torch.dtype | None):
        self.ddp, self.device = ddp, device
        self.activation_checkpointing = p.activation_checkpointing
        self.sharded = p.parallel == "fsdp" and ddp.world > 1
        self.name = p.parallel if ddp.world > 1 else "single"
        self.replica: GPT | None = None
        if self.sharded and amp_dtype == torch.float16:
            raise GptlabError("precision=fp16 with parallel: fsdp is not supported (no sharded grad scaler); use precision: bf16 or fp32")

    def prepare(self, model: GPT) -> GPT:
        """Apply activation checkpointing and (FSDP) shard ``model`` in place; return it."""
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh  # FSDP only: not loaded by plain or DDP runs
            from torch.distributed.fsdp import fully_shard

            if self.ddp.main:
                self.replica = copy.deepcopy(model).eval()
            mesh = init_device_mesh(self.device.type, (self.ddp.world,))
            if self.activation_checkpointing:
                apply_activation_checkpointing(model)
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        elif self.activation_checkpointing:
            apply_activation_checkpointing(model)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the module the loop calls: DDP around ``model`` for ``ddp`` with several processes, else ``model``."""
        if self.ddp.world > 1 and not self.sharded:
            return DistributedDataParallel(model, device_ids=[self.ddp.local_rank] if self.device.type == "cuda" else None)
        return model

    def sync(self, model: GPT, train_model: torch.nn.Module, sync: bool) -> AbstractContextManager:
        """Context of one micro-step: gradients are reduced across processes only when ``sync``."""
        if self.sharded:
            model.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else train_model.no_sync()

    def view(self, model: GPT) -> GPT | None:
        """The full model for evaluation and saving on rank 0 (FSDP: gathers the shards into
        the replica, a collective every rank calls); None on the other ranks under FSDP."""
        if not self.sharded:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # FSDP only

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.replica is not None:
            self.replica.load_state_dict(full)
        return self.replica

    def save(self, folder: Path, model: GPT, optimizer, tokenizer: str, extra: dict, state: dict | None, trainable_only: bool = False) -> None:
        """Write the training checkpoint ``folder`` (rank 0 writes; FSDP: every rank writes its shards).
        ``trainable_only`` (plain checkpoints): the weights are the trained tensors only."""
        if not self.sharded:
            if self.ddp.main:
                save_model(folder, model, tokenizer, extra, optimizer, state, trainable_only=trainable_only)
            return
        full = self.view(model)
        save_sharded(folder, model, optimizer, full, tokenizer, extra, state, self.ddp)
        dist.barrier()

    def load(self, folder: Path, model: GPT, optimizer) -> dict:
        """Restore weights, optimizer and RNG states from ``folder`` (either format, any former
        process count); return ``state.json``."""
        state = load_any(folder, model, optimizer, self.sharded)
        if self.sharded:
            self.view(model)  # the replica takes the loaded weights (a collective)
        return state
