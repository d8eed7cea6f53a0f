"""Params of generation and scoring: generate, score (the LLM judge)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class GenerateParams:
    """The ``generate`` section: how responses to the test instructions are sampled."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        from gptlab.sampling import SamplingConfig

        try:
            SamplingConfig(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)
        except Exception as e:  # the sampling config names the field
            raise ValueError(str(e)) from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} is impossible: must be >= 1")


@dataclass(frozen=True)
class JudgeParams:
    """An LLM judge over HTTP: ``api`` none (offline metrics only), ollama or openai (compatible)."""

    api: Literal["none", "ollama", "openai"] = "none"
    url: str = "http://127.0.0.1:11434"
    model: str = "llama3"
    prompt: str | None = None
    timeout_s: float = 120.0
    retries: int = 2
    concurrency: int = 4
    num_ctx: int = 2048
    seed: int = 123
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens} is impossible: must be >= 1 (or null for the server's default)")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url={self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0 or self.retries < 0 or self.concurrency < 1:
            raise ValueError("timeout_s must be > 0, retries >= 0 and concurrency >= 1")


@dataclass(frozen=True)
class ScoreParams:
    """The ``score`` section: offline metrics always, plus an optional LLM judge."""

    judge: JudgeParams = field(default_factory=JudgeParams)
    loss_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.loss_batch_size < 1:
            raise ValueError(f"loss_batch_size={self.loss_batch_size} is impossible: must be >= 1")
