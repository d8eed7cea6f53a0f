"""Params of the litgpt track."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LitgptParams:
    """The ``litgpt`` section: the litgpt track (SmolLM2-135M-Instruct from GGUF, finetune_lora)."""

    enabled: bool = False
    config_name: str = "SmolLM2-135M-Instruct"
    max_steps: int = 20
    lr: float = 2e-4
    micro_batch_size: int = 2
    global_batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_seq_length: int = 256
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "global_batch_size", "lora_r", "max_seq_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size={self.global_batch_size} must be a multiple of micro_batch_size={self.micro_batch_size}")
