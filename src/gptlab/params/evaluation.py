"""Params of generation and scoring: generate, score (the LLM judge)."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from gptlab.errors import GptlabError, ParamsError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token (the one sampler, :func:`gptlab.sampling.generate`, takes it).

    ``temperature`` 0 is greedy; ``top_k``/``top_p`` None is off; ``seed`` None draws from
    torch's global generator.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise GptlabError(f"max_new_tokens={self.max_new_tokens} is impossible: must be >= 0")
        if self.temperature < 0:
            raise GptlabError(f"temperature={self.temperature} is impossible: must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GptlabError(f"top_k={self.top_k} is impossible: must be >= 1 (or None for off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GptlabError(f"top_p={self.top_p} is impossible: must be > 0 and <= 1 (or None for off)")


@dataclass(frozen=True)
class GenerateParams(SamplingConfig):
    """The ``generate`` section: the sampling of the test responses (a :class:`SamplingConfig`;
    ``seed`` null takes the global seed), plus batching and the device."""

    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise GptlabError(f"batch_size={self.batch_size} is impossible: must be >= 1")


JUDGE_PLACEHOLDERS = ("prompt", "instruction", "input", "output", "response")


@dataclass(frozen=True)
class JudgeParams:
    """The ``score.judge`` section and the judge client's config (one type for both).

    ``api``: none (offline metrics only), ollama (``POST {url}/api/chat``) or openai
    (``POST {url}/v1/chat/completions``: vLLM, llama.cpp server, ``gptlab serve``). ``prompt``:
    a ``str.format`` template over ``{prompt}``, ``{instruction}``, ``{input}``, ``{output}``
    and ``{response}`` (None: the built-in 0..100 prompt). ``timeout_s``: per request.
    ``retries``: extra tries after a connection error, timeout, 429 or 5xx, waiting
    ``backoff_s * 2**n`` seconds. ``concurrency``: requests in flight. ``max_tokens``: cap on
    the reply (None: the server's default). An OpenAI-compatible server that needs a key gets
    ``OPENAI_API_KEY`` from the environment, read at request time (never stored here).
    """

    api: Literal["none", "ollama", "openai"] = "none"
    url: str = "http://127.0.0.1:11434"
    model: str = "llama3"
    prompt: str | None = None
    temperature: float = 0.0
    timeout_s: float = 120.0
    retries: int = 2
    backoff_s: float = 1.0
    concurrency: int = 4
    num_ctx: int = 2048
    seed: int = 123
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.api not in ("none", "ollama", "openai"):
            raise ParamsError(f"api={self.api!r} is unknown; choose none, ollama or openai")
        if not self.url.startswith(("http://", "https://")):
            raise ParamsError(f"url={self.url!r} must start with http:// or https://, e.g. http://127.0.0.1:11434")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ParamsError(f"max_tokens={self.max_tokens} is impossible: must be >= 1 (or null for the server's default)")
        if self.timeout_s <= 0 or self.concurrency < 1:
            raise ParamsError(f"timeout_s={self.timeout_s} / concurrency={self.concurrency} is impossible: timeout_s must be > 0 and concurrency >= 1")
        if self.retries < 0 or self.backoff_s < 0 or self.temperature < 0:
            raise ParamsError(f"retries={self.retries} / backoff_s={self.backoff_s} / temperature={self.temperature} is impossible: each must be >= 0")
        if self.prompt is not None:
            _check_template(self.prompt)


def _check_template(template: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:  # string.Formatter's own error
        raise ParamsError(f"prompt is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted(fields - set(JUDGE_PLACEHOLDERS))
    if unknown:
        raise ParamsError(f"prompt uses unknown placeholders {unknown}; allowed: {', '.join('{' + p + '}' for p in JUDGE_PLACEHOLDERS)}")


@dataclass(frozen=True)
class ScoreParams:
    """The ``score`` section: offline metrics always, plus an optional LLM judge."""

    judge: JudgeParams = field(default_factory=JudgeParams)
    loss_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.loss_batch_size < 1:
            raise ParamsError(f"loss_batch_size={self.loss_batch_size} is impossible: must be >= 1")
