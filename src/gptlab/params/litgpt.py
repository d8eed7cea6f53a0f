"""Params of the litgpt track (the one type: the ``litgpt`` section, also what
:func:`gptlab.litgpt.runner.finetune_lora` takes)."""

from __future__ import annotations

from dataclasses import dataclass

from gptlab.errors import ParamsError

PRECISIONS = ("32-true", "bf16-true", "bf16-mixed", "16-true", "16-mixed")


@dataclass(frozen=True)
class LitgptParams:
    """The ``litgpt`` section: the litgpt track (SmolLM2-135M-Instruct from GGUF, ``litgpt finetune_lora``).

    Training stops after ``max_steps`` optimizer steps (or ``epochs``, whichever comes first);
    one step is ``global_batch_size`` samples in micro-batches of ``micro_batch_size``. The
    learning rate warms up linearly for ``warmup_steps`` (null: a tenth of ``max_steps``, at
    least 1) then follows a cosine to litgpt's min_lr. ``lora_query`` ... ``lora_head``: which
    litgpt layers get adapters. ``eval_interval`` null: validate only once, at the end.
    ``val_split_fraction``: the share litgpt splits off when no validation file is given.
    ``timeout_s``: wall-clock limit of the litgpt subprocess (null: none).
    """

    enabled: bool = False
    config_name: str = "SmolLM2-135M-Instruct"
    max_steps: int = 20
    lr: float = 2e-4
    weight_decay: float = 0.0
    micro_batch_size: int = 2
    global_batch_size: int = 8
    warmup_steps: int | None = None
    epochs: int = 100
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_query: bool = True
    lora_key: bool = False
    lora_value: bool = True
    lora_projection: bool = False
    lora_mlp: bool = False
    lora_head: bool = False
    max_seq_length: int = 256
    val_split_fraction: float = 0.1
    eval_interval: int | None = None
    eval_max_iters: int = 100
    eval_max_new_tokens: int = 32
    precision: str = "32-true"
    seed: int = 1337
    timeout_s: float | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None

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
