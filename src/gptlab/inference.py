"""Inference preparation: weights in fp32, bf16 or int8, and a compiled decode step.

Every inference path (the generate stage, ``gptlab sample``/``chat``/``serve``, the inference
bench) calls :func:`prepare` on a loaded model; the one sampler (:mod:`gptlab.sampling`) then
runs as usual: a prefill pass, then one token per step through ``model.decode``, the static-shape
step over a preallocated KV cache (:class:`gptlab.model.KVCache`).

- ``weights="bf16"`` casts every weight to bfloat16 (activations follow; RoPE tables are
  computed in fp32 and cast, as on a GPU). On a CPU with native bf16 each Linear's weight is
  then reordered once for oneDNN (:class:`PackedLinear`), unless the step is compiled.
- ``weights="int8"`` replaces every ``nn.Linear`` (attention, MLP and the head; the embedding
  stays as loaded) by :class:`Int8Linear`: weight-only, symmetric, one fp scale per output
  channel, made from the loaded weights at load time (nothing new is written to disk).
  Activations stay in the model's float dtype, except that on a CPU with native bf16 each
  int8 matmul takes its input in bf16 (``torch.ops.aten._weight_int8pack_mm``, whose fp32-input
  path is slower than an fp32 matmul); off the CPU a dequantising matmul.
- ``compile`` swaps ``model.decode`` for ``torch.compile(model.decode)`` (CUDA: mode
  ``reduce-overhead``, CUDA graphs); the first steps of each new shape pay the compilation
  (see :data:`COMPILE_AUTO_DEVICES` for where ``auto`` turns it on).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.errors import GptlabError
from gptlab.model import GPT

WEIGHTS = ("fp32", "bf16", "int8")
"""The weight formats :func:`prepare` makes."""

COMPILE_AUTO_DEVICES = ("cuda",)
"""Device types where ``compile="auto"`` compiles the decode step: where it was measured to pay.
On this project's 2-core CPU (SmolLM2-135M, 2 threads, bench/decode.py) inductor's compiled step
decoded at 0.95x eager's rate (fp32; int8 0.92x of int8 eager) after 184 s of warm-up, so the CPU
is left out; CUDA is in for CUDA graphs (not measured in this session: no GPU)."""

Weights = Literal["fp32", "bf16", "int8"]
Compile = Literal["auto", True, False] | bool | str


def cpu_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with native bf16 (AVX512-BF16 or AMX), as oneDNN reports it:
    where bf16 weights are packed (:class:`PackedLinear`) and int8 matmuls take bf16 activations
    (:func:`int8_matmul_dtype`)."""
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def replace_linears(model: GPT, make) -> GPT:
    """Replace every ``nn.Linear`` of ``model`` (in place) by ``make(linear)`` and return the
    model; a head tied to the embedding gets its own copy (the embedding keeps its rows)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))
    return model


def int8_matmul_dtype(device: torch.device) -> torch.dtype | None:
    """The activations' dtype for the CPU's int8 matmul (``aten._weight_int8pack_mm``):
    bfloat16 where the CPU has native bf16 (:func:`cpu_native_bf16`: measured 2.7x faster than an
    fp32 linear there, while fp32 activations made the same kernel 4x slower), else None (the
    activations' own dtype). Off the CPU: None."""
    return torch.bfloat16 if cpu_native_bf16(device) else None


class Int8Linear(nn.Module):
    """A Linear layer whose weight is int8 with one scale per output channel (weight-only).

    ``weight``: (out, in) int8; ``scales``: (out,) in ``act_dtype``, the dtype the matmul's input
    is cast to (None: the input's own; see :func:`int8_matmul_dtype`); ``bias``: (out,) or None.
    ``forward``: (..., in) -> (..., out) in the input's dtype, equal to
    ``F.linear(x, weight * scales[:, None], bias)`` up to rounding (of the activations too when
    ``act_dtype`` is bfloat16).
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, act_dtype: torch.dtype | None = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales if act_dtype is None else scales.to(act_dtype))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.act_dtype = act_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_dtype: torch.dtype | None = None) -> Int8Linear:
        """Quantize ``linear``'s weight per output channel: ``scale = max|row| / 127``,
        ``q = round(w / scale)`` in [-127, 127]; bias (and scales, unless ``act_dtype``) keep the weight's dtype."""
        w = linear.weight.detach()
        scales = (w.abs().amax(dim=1).float() / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(q.contiguous(), scales.to(w.dtype), bias, act_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out), in ``x``'s dtype."""
        xa = x if self.act_dtype is None else x.to(self.act_dtype)
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(xa.reshape(-1, self.in_features).contiguous(), self.weight, self.scales.to(xa.dtype))
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:  # dequantising matmul: x @ (q * s).T == (x @ q.T) * s
            y = F.linear(xa, self.weight.to(xa.dtype)) * self.scales.to(xa.dtype)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class PackedLinear(nn.Module):
    """A bf16 Linear layer whose weight oneDNN has reordered once into its own blocked layout,
    used on a CPU with native bf16 (:func:`cpu_native_bf16`), where oneDNN otherwise reorders
    each weight at every call (measured on the 2-core Xeon with AMX, SmolLM2-135M's shapes, one
    row: the head's matmul 2.4 ms unpacked, 1.2 ms packed; fp32 4.0 ms).

    ``packed``: the (out, in) weight as an opaque oneDNN tensor (an attribute, not in the state
    dict); ``bias``: (out,) bf16 or None. ``forward``: (..., in) bf16 -> (..., out) bf16, the same
    numbers as ``F.linear`` of the bf16 weight (the same oneDNN kernel, without the per-call
    reorder). CPU only; not for ``torch.compile`` (inductor packs weights itself).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().to(torch.bfloat16).contiguous()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) bf16 -> (..., out) bf16."""
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")


def quantize_int8(model: GPT) -> GPT:
    """Replace every ``nn.Linear`` of ``model`` (in place) by an :class:`Int8Linear` of its
    weights and return the model. A tied head gets its own int8 copy; the embedding keeps its
    float rows. On a CPU with native bf16 the matmuls take bf16 activations
    (:func:`int8_matmul_dtype`); everything else (norms, attention, residuals) stays in the model's dtype."""
    act = int8_matmul_dtype(next(model.parameters()).device)
    if act is not None and next(model.parameters()).dtype == torch.bfloat16:
        act = None  # a bf16 model's activations are bf16 already
    return replace_linears(model, lambda linear: Int8Linear.from_linear(linear, act))


def wants_compile(compile: Compile, device: torch.device) -> bool:
    """Whether ``compile`` (True, False, or "auto": on for :data:`COMPILE_AUTO_DEVICES`) compiles the decode step on ``device``."""
    if isinstance(compile, str):
        if compile.lower() in ("true", "on", "yes"):
            return True
        if compile.lower() in ("false", "off", "no"):
            return False
        if compile != "auto":
            raise GptlabError(f"compile={compile!r} is unknown; choose auto, true or false")
        return device.type in COMPILE_AUTO_DEVICES
    return bool(compile)


def prepare(model: GPT, weights: Weights = "fp32", compile: Compile = "auto") -> GPT:
    """Return ``model`` ready for inference: eval mode, no gradients, weights in ``weights``
    (fp32: as loaded, cast to fp32 if stored otherwise; bf16; int8: weight-only, per output
    channel), and ``model.decode`` compiled where ``compile`` says so (see
    :func:`wants_compile`). The model is changed in place; call it once, after loading (and
    after merging a LoRA adapter)."""
    if weights not in WEIGHTS:
        raise GptlabError(f"weights={weights!r} is unknown; choose one of {', '.join(WEIGHTS)}")
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    compiled = wants_compile(compile, device)
    if weights == "bf16":
        if not any(isinstance(m, PackedLinear) for m in model.modules()):
            model.to(torch.bfloat16)
            if cpu_native_bf16(device) and not compiled:
                replace_linears(model, PackedLinear)
    elif not any(isinstance(m, Int8Linear) for m in model.modules()):
        model.to(torch.float32)
        if weights == "int8":
            quantize_int8(model)
    if compiled:
        mode = "reduce-overhead" if device.type == "cuda" else None
        model.decode = torch.compile(model.decode, mode=mode, dynamic=False)
        model.static_decode = True
    return model
