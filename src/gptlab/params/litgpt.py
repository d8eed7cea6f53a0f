"""Params of the litgpt track (the one type: the ``litgpt`` section, also what
:func:`gptlab.litgpt.runner.finetune_lora` takes)."""

from __future__ import annotations

from dataclasses import dataclass

from gptlab.errors import ParamsError

PRECISIONS = ("32-true", "bf16-true", "bf16-mixed", "16-true", "16-mixed")


@dataclass(frozen=True)
class LitgptParams:
    """The ``litgpt`` section: the litgpt track (SmolLM2-135M-Instruct from GGUF, ``litgpt finetune_lora``)."""

    enabled: bool = False
    """run the litgpt track (needs the litgpt extra: pip install 'gptlab[litgpt]'); false: the stage writes an empty response list"""
    config_name: str = "SmolLM2-135M-Instruct"
    """litgpt's name of the model config matching the GGUF (`litgpt download list`)"""
    max_steps: int = 20
    """optimizer steps (training stops at max_steps or epochs, whichever comes first)"""
    lr: float = 2e-4
    """peak learning rate (> 0); a linear warmup, then a cosine to litgpt's min_lr"""
    weight_decay: float = 0.0
    """AdamW's weight decay"""
    micro_batch_size: int = 2
    """samples per micro-batch"""
    global_batch_size: int = 8
    """samples per optimizer step (a multiple of micro_batch_size)"""
    warmup_steps: int | None = None
    """linear warmup steps, in [1, max_steps) (null: a tenth of max_steps, at least 1)"""
    epochs: int = 100
    """passes over the train split at most"""
    lora_r: int = 8
    """LoRA rank"""
    lora_alpha: int = 16
    """LoRA alpha (the update is scaled by alpha / r)"""
    lora_dropout: float = 0.05
    """dropout on the adapters' input, in [0, 1)"""
    lora_query: bool = True
    """adapters on the attention queries"""
    lora_key: bool = False
    """adapters on the attention keys"""
    lora_value: bool = True
    """adapters on the attention values"""
    lora_projection: bool = False
    """adapters on the attention's output projection"""
    lora_mlp: bool = False
    """adapters on the MLP"""
    lora_head: bool = False
    """an adapter on the output head"""
    max_seq_length: int = 256
    """truncate examples to this many tokens"""
    val_split_fraction: float = 0.1
    """share litgpt splits off for validation when no validation file is given, in (0, 1)"""
    eval_interval: int | None = None
    """validate every this many steps (null: only once, at the end)"""
    eval_max_iters: int = 100
    """validation batches per evaluation"""
    eval_max_new_tokens: int = 32
    """tokens of the sample answer litgpt generates at each evaluation"""
    precision: str = "32-true"
    """Lightning precision: 32-true (use it on a CPU), bf16-true, bf16-mixed, 16-true or 16-mixed"""
    seed: int = 1337
    """litgpt's seed"""
    timeout_s: float | None = None
    """wall-clock limit of the litgpt subprocess in seconds (null: none)"""
    max_new_tokens: int = 64
    """tokens per test response at most"""
    temperature: float = 0.0
    """sampling temperature of the test responses (0: greedy)"""
    top_k: int | None = None
    """sample among the k likeliest tokens only (null: off)"""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ParamsError:
            return ParamsError(f"{name}={getattr(self, name)!r} {why}")

        positive = (
            "max_steps",
            "micro_batch_size",
            "global_batch_size",
            "epochs",
            "lora_r",
            "lora_alpha",
            "max_seq_length",
            "max_new_tokens",
            "eval_max_iters",
        )
        for name in positive:
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "is impossible: must be an integer >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise bad("global_batch_size", f"is not a multiple of micro_batch_size={self.micro_batch_size}")
        if self.warmup_steps is not None and not 1 <= self.warmup_steps < self.max_steps:
            raise bad("warmup_steps", f"must be at least 1 and below max_steps={self.max_steps} (litgpt's scheduler divides by both), or null")
        if not self.lr > 0:
            raise bad("lr", "must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if not 0 < self.val_split_fraction < 1:
            raise bad("val_split_fraction", "must be in (0, 1)")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"is not one of {', '.join(PRECISIONS)} (use 32-true on CPU)")
        if self.eval_interval is not None and self.eval_interval < 1:
            raise bad("eval_interval", "must be a positive integer or null")

    @property
    def warmup(self) -> int:
        """The warmup steps litgpt gets: ``warmup_steps``, or max(1, min(max_steps // 10, max_steps - 1))."""
        return self.warmup_steps if self.warmup_steps is not None else max(1, min(self.max_steps // 10, self.max_steps - 1))
