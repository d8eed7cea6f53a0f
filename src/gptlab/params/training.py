"""Params of the model and the training stages: model, pretrain, convert, finetune (LoRA)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from gptlab.config import GPTConfig
from gptlab.errors import ParamsError


@dataclass(frozen=True)
class ModelParams:
    """The ``model`` section: a preset and overrides of :class:`gptlab.config.GPTConfig`'s fields
    (the same names; a test keeps them in step). ``preset`` (e.g. ``gpt2-124M``, ``smollm2-135m``)
    supplies every field left null; without a preset a null field takes GPTConfig's default."""

    preset: str | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    emb_dim: int | None = None
    n_heads: int | None = None
    n_layers: int | None = None
    drop_rate: float | None = None
    qkv_bias: bool | None = None
    tie_embeddings: bool | None = None
    norm: str | None = None
    norm_eps: float | None = None
    positions: str | None = None
    rope_base: float | None = None
    mlp: str | None = None
    mlp_hidden: int | None = None
    n_kv_heads: int | None = None
    proj_bias: bool | None = None
    mlp_bias: bool | None = None

    def __post_init__(self) -> None:
        self.to_config()  # an impossible shape fails here, naming the fields

    def to_config(self, tokenizer_vocab: int | None = None) -> GPTConfig:
        """Return the GPTConfig these params describe. ``tokenizer_vocab`` (the data's
        tokenizer size, for training from scratch) is the vocabulary when ``vocab_size`` is null."""
        given = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        if self.vocab_size is None and tokenizer_vocab is not None:
            given["vocab_size"] = tokenizer_vocab
        return GPTConfig.preset(self.preset, **given) if self.preset else GPTConfig(**given)


@dataclass(frozen=True)
class LoopParams:
    """What every training loop (pretrain, finetune) shares: schedule, optimizer, precision, resume.

    ``parallel`` (several processes under torchrun): ``ddp`` (a full copy per process) or
    ``fsdp`` (FSDP2: weights, gradients and optimizer state sharded; sharded checkpoints that
    resume on any process count); one process trains plainly either way.
    ``activation_checkpointing``: recompute each block's activations in the backward pass
    (less memory, ~a third more compute); the numbers are unchanged."""

    max_steps: int = 500
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    device: str = "auto"
    checkpoint_dir: str = "checkpoints/pretrain"
    resume: bool = True
    keep_runs: int = 3
    parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.parallel not in ("ddp", "fsdp"):
            raise ParamsError(f"parallel={self.parallel!r} is unknown; choose ddp (a full copy per process) or fsdp (sharded weights, gradients and optimizer)")
        if self.keep_runs < 0:
            raise ParamsError(f"keep_runs={self.keep_runs} is impossible: must be >= 0 (0 keeps every run folder)")
        for name in ("max_steps", "eval_interval"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.warmup_steps < 0:
            raise ParamsError(f"warmup_steps={self.warmup_steps} is impossible: must be >= 0")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise ParamsError(f"lr={self.lr}, min_lr={self.min_lr} are impossible: need lr > 0 and 0 <= min_lr <= lr")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ParamsError(f"{name}={getattr(self, name)} is impossible: must be >= 0 and < 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ParamsError("weight_decay and grad_clip must be >= 0 (grad_clip 0 = off)")
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            raise ParamsError(f"device={self.device!r} is not allowed; allowed values: auto, cpu, cuda, cuda:N, mps")

    @property
    def effective_warmup(self) -> int:
        """Warmup steps the schedule uses: ``warmup_steps``, clipped to a tenth of ``max_steps``
        so a short run (``-S x.max_steps=10`` or ``--max-steps 10``) is not all warmup."""
        return min(self.warmup_steps, self.max_steps // 10)

    def warmup_note(self) -> str | None:
        """One line saying how warmup was clipped, or None when ``warmup_steps`` is used as set."""
        if self.effective_warmup == self.warmup_steps:
            return None
        return f"warmup_steps={self.warmup_steps} clipped to {self.effective_warmup} (at most max_steps // 10 with max_steps={self.max_steps})"

    def with_max_steps(self, max_steps: int | None):
        """Return these params with ``max_steps`` replaced (None: unchanged); warmup clips itself."""
        return self if max_steps is None else dataclasses.replace(self, max_steps=max_steps)


@dataclass(frozen=True)
class PretrainParams(LoopParams):
    """The ``pretrain`` section: the training loop's settings plus how batches are drawn from shards."""

    batch_size: int = 16
    tokens_per_step: int = 8192
    eval_windows: int = 64
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 48

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "tokens_per_step", "eval_windows"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.sample_tokens < 0:
            raise ParamsError(f"sample_tokens={self.sample_tokens} is impossible: must be >= 0")


CONVERT_SOURCES = ("pretrained", "smollm2-135m-instruct", "gpt2-124M", "gpt2-355M", "gpt2-774M", "gpt2-1558M")


@dataclass(frozen=True)
class ConvertParams:
    """The ``convert`` section: which model fine-tuning starts from.

    ``source``: ``pretrained`` (our models/pretrained), ``gpt2-124M`` ... ``gpt2-1558M`` (OpenAI's
    TensorFlow checkpoints, downloaded once), or ``hf:<dir>`` (a local Hugging Face GPT-2 folder).
    ``weights`` (``source: pretrained`` only): ``best`` (the lowest val loss, ``best/``; the final
    model when there is no ``best/``) or ``final`` (the last step).
    ``mirror``: a base URL (``https://...`` or ``file:///...``) that replaces OpenAI's
    ``https://openaipublic.blob.core.windows.net/gpt-2/models`` (it must hold ``<size>/<file>``).
    """

    source: str = "pretrained"
    mirror: str | None = None
    weights: Literal["best", "final"] = "best"

    def __post_init__(self) -> None:
        if self.weights not in ("best", "final"):
            raise ParamsError(f"weights={self.weights!r} is unknown; choose best (lowest val loss, models/pretrained/best) or final")
        if self.source not in CONVERT_SOURCES and not (self.source.startswith("hf:") and len(self.source) > 3):
            raise ParamsError(
                f"source={self.source!r} is unknown; choose one of {', '.join(CONVERT_SOURCES)} or hf:<a Hugging Face folder (GPT-2, Llama, Qwen2)>"
            )
        if self.mirror is not None and not self.mirror.startswith(("https://", "http://", "file://")):
            raise ParamsError(f"mirror={self.mirror!r} must be an https://, http:// or file:// base URL (or null for OpenAI's)")


@dataclass(frozen=True)
class LoraParams:
    """LoRA adapters (the one LoRA config type; :mod:`gptlab.lora` takes it): rank ``r`` (>= 1),
    output scale ``alpha / r``, ``dropout`` on the adapter input (in [0, 1)) and ``targets``:
    names among qkv, proj, fc, mlp_proj, head, or glob patterns over module names
    (``blocks.*.attn.qkv``: anything holding ``.``, ``*``, ``?`` or ``[``)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc", "mlp_proj"])

    def __post_init__(self) -> None:
        choices = "qkv, proj, fc, mlp_proj, head (or a glob over module names such as blocks.*.attn.qkv)"
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", [self.targets])
        object.__setattr__(self, "targets", list(self.targets))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ParamsError(f"r={self.r!r} is impossible: must be an integer >= 1 (8 or 16 are usual)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ParamsError(f"alpha={self.alpha!r} is impossible: must be a number > 0 (often 2 x r)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ParamsError(f"dropout={self.dropout!r} is impossible: must be >= 0 and < 1")
        if not self.targets:
            raise ParamsError(f"targets is empty; name at least one of {choices}")
        for t in self.targets:
            if not isinstance(t, str) or not t or (t not in _LORA_TARGETS and not any(c in t for c in ".*?[")):
                raise ParamsError(f"targets: {t!r} is unknown; choose among {choices}")

    @property
    def scaling(self) -> float:
        """The adapter's output scale ``alpha / r``."""
        return self.alpha / self.r

    def to_dict(self) -> dict:
        """Return the params as a JSON-ready dict (targets as a list)."""
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> LoraParams:
        """Return params from :meth:`to_dict` output (other keys ignored)."""
        return cls(r=data["r"], alpha=data["alpha"], dropout=data["dropout"], targets=list(data["targets"]))


_LORA_TARGETS = ("qkv", "proj", "fc", "mlp_proj", "head")


@dataclass(frozen=True)
class FinetuneParams(LoopParams):
    """The ``finetune`` section: instruction fine-tuning with LoRA (default) or all weights."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraParams = field(default_factory=LoraParams)
    prompt_style: Literal["alpaca", "book", "chat"] = "alpaca"
    mask_prompt: bool = False
    allowed_max_length: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    eval_batches: int | None = None
    checkpoint_dir: str = "checkpoints/finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.allowed_max_length is not None and self.allowed_max_length < 8:
            raise ParamsError(f"allowed_max_length={self.allowed_max_length} is impossible: must be >= 8 tokens (or null for the context length)")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ParamsError(f"eval_batches={self.eval_batches} is impossible: must be >= 1 (or null for the whole split)")
