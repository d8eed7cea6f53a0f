"""LoRA: low-rank adapters on a GPT's linear layers; inject, train, save, load, merge.

A wrapped layer computes ``y = W x + b + (alpha / r) * B (A (dropout(x)))`` with ``A``
(r, in) Kaiming-uniform initialised (as peft does) and ``B`` (out, r) zero, so a fresh
adapter leaves the model's output unchanged. Only ``A`` and ``B`` train.

Targets (``targets`` of :class:`gptlab.params.LoraParams`, the one LoRA config type) are names or glob patterns:

- ``qkv`` (``blocks.*.attn.qkv``), ``proj`` (``blocks.*.attn.proj``), ``fc``
  (``blocks.*.mlp.fc``), ``mlp_proj`` (``blocks.*.mlp.proj``), ``head`` (``head``);
- anything containing ``.``, ``*``, ``?`` or ``[`` is an ``fnmatch`` pattern over module names
  as ``model.named_modules()`` gives them (``blocks.1[01].mlp.fc``, ``blocks.0.*``); only
  ``nn.Linear`` modules are wrapped, and a pattern that matches none is an error.

Tied embeddings: when ``config.tie_embeddings`` the head's base weight *is* ``tok_emb.weight``.
Wrapping ``head`` keeps that tie for the (frozen) base weight: the adapter only changes the
output projection, never the input embedding. :func:`merge_lora` therefore gives the head its
own merged weight and sets ``tie_embeddings=False`` in the returned model's config, so
``checkpoint.save_model`` stores ``head.weight`` separately.

A wrapped head's ``weight`` reads as the effective ``W + (alpha/r) B A`` (differentiable), so
code that uses ``model.head.weight`` directly (a fused head + loss) still sees the adapter,
though without the adapter's dropout; ``GPT.forward`` sends a wrapped head down its plain
``self.head(x)`` path, where dropout applies.

Files: ``adapter.safetensors`` (``<module>.lora_A`` / ``<module>.lora_B``) and ``adapter.json``
(r, alpha, dropout, targets, wrapped module names, base model hash, base config), plus PEFT's
``adapter_config.json`` + ``adapter_model.safetensors`` for the exported Hugging Face model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from gptlab.checkpoint import FORMAT, write_safetensors
from gptlab.convert.load_any import load_any
from gptlab.errors import GptlabError
from gptlab.io import atomic_dir, read_json, write_json
from gptlab.model import GPT
from gptlab.params.training import LoraParams

TARGETS: dict[str, str] = {
    "qkv": "blocks.*.attn.qkv",
    "proj": "blocks.*.attn.proj",
    "fc": "blocks.*.mlp.fc",
    "mlp_proj": "blocks.*.mlp.proj",
    "head": "head",
}
ADAPTER_FORMAT = "gptlab-lora"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
_LORA_PARAMS = ("lora_A", "lora_B")


def _choices() -> str:
    return f"{', '.join(TARGETS)} (or a glob over module names such as blocks.*.attn.qkv)"


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a low-rank adapter: ``(..., in) -> (..., out)``.

    ``base`` is the wrapped Linear (its parameters are shared, not copied, so a tied head stays
    tied); ``lora_A``: (r, in), ``lora_B``: (out, r). ``weight`` / ``bias`` read like a Linear's:
    ``weight`` is the effective (out, in) ``W + scaling * B A`` (differentiable).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.train(base.training)  # an adapter injected into an eval-mode model stays in eval mode

    def delta_weight(self) -> torch.Tensor:
        """Return ``scaling * B @ A``: (out, in), the adapter's change of the weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + scaling * B @ A``: (out, in)."""
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias: (out,) or None."""
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., in) -> (..., out) = base(x) + scaling * B(A(dropout(x)))."""
        return self.base(x) + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Return a new plain ``nn.Linear`` with weight ``W + scaling * B A`` (computed in fp32,
        stored in the base dtype) and a copy of the bias; ``self`` is left unchanged and no
        random numbers are drawn."""
        w = self.base.weight
        merged = (w.float() + self.scaling * (self.lora_B.float() @ self.lora_A.float())).to(w.dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None, device="meta")
        linear.weight = nn.Parameter(merged, requires_grad=w.requires_grad)
        if self.base.bias is not None:
            linear.bias = nn.Parameter(self.base.bias.detach().clone(), requires_grad=self.base.bias.requires_grad)
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Return the model's LoRA layers by module name (``blocks.0.attn.qkv``), in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Return the names of the ``nn.Linear`` modules that ``targets`` select, in model order.

    GptlabError when a target selects no Linear (naming it, the choices and some module names).
    """
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    chosen: set[str] = set()
    for t in targets:
        pattern = TARGETS.get(t, t)
        hits = [name for name in linears if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            sample = ", ".join(linears[:6]) + (", ..." if len(linears) > 6 else "")
            raise GptlabError(f"lora target {t!r} (pattern {pattern!r}) matches no linear layer of the model ({sample}); choose among {_choices()}")
        chosen.update(hits)
    return [name for name in linears if name in chosen]


def inject_lora(model: nn.Module, cfg: LoraParams) -> list[str]:
    """Replace the Linear layers that ``cfg.targets`` select by :class:`LoRALinear` in place;
    return their names. Adapters are created on each layer's device and dtype, ``A`` drawn
    from torch's global RNG (seed it for reproducible adapters). Does not freeze anything:
    call :func:`mark_only_lora_trainable` for that."""
    existing = lora_modules(model)
    if existing:
        raise GptlabError(f"the model already has LoRA layers ({', '.join(list(existing)[:3])}...); inject once, or merge_lora first")
    names = resolve_targets(model, cfg.targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.r, cfg.alpha, cfg.dropout))
    return names


def _is_lora_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _LORA_PARAMS


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Set ``requires_grad`` on the adapter tensors only; everything else (tied embeddings
    included) is frozen. GptlabError if the model has no LoRA layers."""
    if not lora_modules(model):
        raise GptlabError("the model has no LoRA layers; call inject_lora(model, cfg) first")
    for name, p in model.named_parameters():
        p.requires_grad_(_is_lora_param(name))


def lora_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts, shared (tied) tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the adapter tensors only: ``{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}``
    (detached, contiguous)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if _is_lora_param(name)}


def save_adapter(model: GPT, cfg: LoraParams, folder: str | Path, base_hash: str, extra: dict | None = None, files: dict[str, dict] | None = None) -> Path:
    """Write ``adapter.safetensors`` and ``adapter.json`` to ``folder`` (replaced as a whole,
    only once complete); return the folder. ``base_hash``: :func:`model_hash` of the base model.

    ``extra`` adds entries to ``adapter.json``; ``files`` more files to the folder, by name: a
    ``*.safetensors`` name takes a dict of tensors, any other a JSON-able dict (how
    :func:`gptlab.train.finetune.save_adapter_and_peft` adds the PEFT form of the adapter)."""
    modules = lora_modules(model)
    if not modules:
        raise GptlabError("the model has no LoRA layers to save; call inject_lora(model, cfg) first")
    for name, m in modules.items():
        if m.r != cfg.r or not math.isclose(m.alpha, cfg.alpha):
            raise GptlabError(
                f"save_adapter: layer {name} has r={m.r}, alpha={m.alpha} but the config says r={cfg.r}, alpha={cfg.alpha}; pass the config used by inject_lora"
            )
    meta = {
        "format": ADAPTER_FORMAT,
        "version": 1,
        **cfg.to_dict(),
        "modules": list(modules),
        "base_model_hash": base_hash,
        "base_config": model.config.to_dict() if hasattr(model, "config") else None,
    }
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_safetensors(lora_state(model), tmp / ADAPTER_WEIGHTS, {"format": ADAPTER_FORMAT})
        write_json(tmp / ADAPTER_CONFIG, {**meta, **(extra or {})})
        for name, content in (files or {}).items():
            if name.endswith(".safetensors"):
                write_safetensors(content, tmp / name, {"format": "pt"})
            else:
                write_json(tmp / name, content)
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    """Return the parsed ``adapter.json`` of an adapter folder (GptlabError if absent or foreign)."""
    path = Path(folder) / ADAPTER_CONFIG
    meta = read_json(path, f"the config of a LoRA adapter: is {folder} an adapter folder written by save_adapter?")
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise GptlabError(f"{path}: not a gptlab LoRA adapter (format {ADAPTER_FORMAT!r} expected)")
    return meta


def load_adapter(model: GPT, folder: str | Path, base_hash: str | None = None) -> LoraParams:
    """Inject the adapter of ``folder`` into ``model`` (or fill its existing LoRA layers, which
    must be the same modules) and load its tensors; return its :class:`LoraParams`.

    With ``base_hash`` (:func:`model_hash` of ``model``'s base weights) an adapter trained on
    another base fails. Module names and tensor shapes are checked before anything is loaded.
    Does not change ``requires_grad``.
    """
    folder = Path(folder)
    meta = read_adapter_config(folder)
    saved_hash = meta.get("base_model_hash")
    if base_hash is not None and saved_hash != base_hash:
        raise GptlabError(
            f"{folder / ADAPTER_CONFIG}: the adapter was trained on base model {str(saved_hash)[:16]}..., "
            f"this base model is {base_hash[:16]}...; load the base it was trained on, or fine-tune a new adapter on this one"
        )
    cfg = LoraParams.from_dict(meta)
    existing = lora_modules(model)
    names = list(existing) if existing else resolve_targets(model, cfg.targets)
    if names != list(meta["modules"]):
        raise GptlabError(
            f"{folder / ADAPTER_CONFIG}: adapter covers modules {meta['modules'][:4]}... but the model gives {names[:4]}...; use the base model config it was trained with"
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.exists():
        raise GptlabError(f"{weights}: not found; the adapter folder is incomplete, save it again")
    tensors = load_file(weights)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        layer = model.get_submodule(name)  # a Linear, or a LoRALinear already there
        shapes[f"{name}.lora_A"] = (cfg.r, layer.in_features)
        shapes[f"{name}.lora_B"] = (layer.out_features, cfg.r)
    missing, unexpected = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise GptlabError(f"{weights}: tensors do not match the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise GptlabError(f"{weights}: {name} has shape {tuple(tensors[name].shape)}, the model needs {shape} (different r or base shape)")
    if existing and any(m.r != cfg.r for m in existing.values()):
        raise GptlabError(f"{folder / ADAPTER_CONFIG}: r={cfg.r} differs from the model's LoRA layers; load onto a model without LoRA layers")
    if not existing:
        inject_lora(model, cfg)
    params = {n: p for n, p in model.named_parameters() if _is_lora_param(n)}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return cfg


def merge_lora(model: GPT) -> GPT:
    """Replace every :class:`LoRALinear` by its merged plain ``nn.Linear`` in place; return the
    model. A merged head of a tied model gets its own weight and the config becomes
    ``tie_embeddings=False`` (the merged head differs from the input embedding)."""
    for name, module in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merge())
        if name == "head" and getattr(model, "config", None) is not None and model.config.tie_embeddings:
            model.config = dataclasses.replace(model.config, tie_embeddings=False)
    return model


def base_state(model: GPT) -> dict[str, torch.Tensor]:
    """Return the base model's tensors as ``checkpoint.save_model`` stores them (adapters left
    out, wrapped layers under their plain names, tied ``head.weight`` left out)."""
    wrapped = {f"{name}.base." for name in lora_modules(model)}
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if _is_lora_param(key):
            continue
        for prefix in wrapped:
            if key.startswith(prefix):
                key = prefix[: -len("base.")] + key[len(prefix) :]
                break
        state[key] = value.detach().contiguous()
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    return state


def model_hash(source: str | Path | GPT) -> str:
    """Return the sha256 (64 hex) identifying a base model.

    For a folder (or a ``.safetensors`` file): the sha256 of ``model.safetensors``'s bytes. For
    an in-memory GPT (with or without LoRA layers): the sha256 of the bytes
    ``checkpoint.save_model`` would write for its base weights, so a model and the folder it was
    saved to or loaded from hash alike.
    """
    if isinstance(source, nn.Module):
        return hashlib.sha256(save(base_state(source), metadata={"format": FORMAT})).hexdigest()
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise GptlabError(f"{path}: not found; model_hash needs a checkpoint folder with model.safetensors")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_merged(model_dir: str | Path, adapter_dir: str | Path | None = None, device: str | torch.device = "cpu"):
    """Return ``(model, tokenizer)`` of ``model_dir`` (any folder :func:`gptlab.convert.load_any.load_any`
    reads) with the LoRA adapter of ``adapter_dir`` (if given) loaded, checked against the base's
    hash when the base is a gptlab checkpoint, and merged into plain weights; eval mode on ``device``."""
    model, tokenizer = load_any(model_dir, device)
    if adapter_dir is not None:
        weights = Path(model_dir) / "model.safetensors"
        load_adapter(model, adapter_dir, model_hash(model_dir) if weights.exists() else None)
        model = merge_lora(model).to(device).eval()
    return model, tokenizer
