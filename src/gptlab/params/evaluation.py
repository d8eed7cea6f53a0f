"""Params of generation and scoring: generate, score (the LLM judge)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Literal

from gptlab.errors import ParamsError

TEMPERATURE_FLOOR = 1e-5
"""Temperatures below this sample greedily (see :class:`SamplingConfig`)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token (the one sampler, :func:`gptlab.sampling.generate`, takes it).

    A temperature below :data:`TEMPERATURE_FLOOR` (1e-5) is greedy, as 0 is: dividing fp32 logits
    by a smaller one overflows (1e-45 gave inf/nan probabilities), and the sampled token would be
    the likeliest anyway. Non-finite ``temperature`` or ``top_p`` is refused.
    """

    max_new_tokens: int = 64
    """tokens to generate at most per answer (>= 0)"""
    temperature: float = 1.0
    """sampling temperature (0, or below 1e-5: greedy, the likeliest token; finite)"""
    top_k: int | None = None
    """sample among the k likeliest tokens only (>= 1; null: off)"""
    top_p: float | None = None
    """sample among the likeliest tokens whose probabilities sum to p, in (0, 1] (null: off)"""
    seed: int | None = None
    """seed of the sampling generator (null: the generate stage takes the global seed; other callers torch's global generator)"""
    min_p: float | None = None
    """drop tokens less likely than min_p times the likeliest one, after temperature, in [0, 1] (null or 0: off)"""
    repetition_penalty: float = 1.0
    """divide the positive logits (multiply the negative ones) of tokens already in the prompt or answer by this, > 0 (1: off; Hugging Face's)"""
    frequency_penalty: float = 0.0
    """subtract this times the count of each token already in the answer from its logit, in [-2, 2] (0: off; OpenAI's)"""
    presence_penalty: float = 0.0
    """subtract this from the logit of each token already in the answer, in [-2, 2] (0: off; OpenAI's)"""
    penalty_last_n: int | None = None
    """the three penalties look at the last N tokens of prompt and answer together, >= 0 (llama.cpp's and Ollama's repeat_last_n; null: the
    repetition penalty sees the whole prompt and answer, frequency and presence the answer only)"""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ParamsError(f"max_new_tokens={self.max_new_tokens} is impossible: must be >= 0")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ParamsError(f"{name}={value} is impossible: must be a finite number")
        if self.temperature < 0:
            raise ParamsError(f"temperature={self.temperature} is impossible: must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ParamsError(f"top_k={self.top_k} is impossible: must be >= 1 (or None for off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ParamsError(f"top_p={self.top_p} is impossible: must be > 0 and <= 1 (or None for off)")
        for name in ("min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ParamsError(f"{name}={value} is impossible: must be a finite number")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ParamsError(f"min_p={self.min_p} is impossible: must be >= 0 and <= 1 (or None for off)")
        if self.repetition_penalty <= 0:
            raise ParamsError(f"repetition_penalty={self.repetition_penalty} is impossible: must be > 0 (1 = off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ParamsError(f"{name}={getattr(self, name)} is impossible: must be >= -2 and <= 2 (0 = off)")
        if self.penalty_last_n is not None and self.penalty_last_n < 0:
            raise ParamsError(f"penalty_last_n={self.penalty_last_n} is impossible: must be >= 0 (or None: the whole prompt and answer)")

    @property
    def penalized(self) -> bool:
        """Return True when a penalty is on (the sampler then needs each row's tokens so far)."""
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0


@dataclass(frozen=True)
class GenerateParams(SamplingConfig):
    """The ``generate`` section: the sampling of the test responses (a :class:`SamplingConfig`),
    plus batching, the device, and the inference weights and compiled decode
    (:func:`gptlab.inference.prepare`)."""

    batch_size: int = 16
    """test prompts answered together (>= 1)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    weights: Literal["fp32", "bf16", "int8"] = "fp32"
    """the weights the model answers with, made at load time from its fp32 safetensors: fp32 (as stored), bf16 (cast) or int8 (weight-only, one scale per output channel)"""
    compile: bool | Literal["auto"] = "auto"
    """torch.compile the one-token decode step (static KV cache; CUDA graphs on a GPU): auto (on CUDA only, where it pays), true or false"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ParamsError(f"batch_size={self.batch_size} is impossible: must be >= 1")
        if self.weights not in ("fp32", "bf16", "int8"):
            raise ParamsError(f"weights={self.weights!r} is unknown; choose fp32, bf16 or int8")


JUDGE_PLACEHOLDERS = ("prompt", "instruction", "input", "output", "response")


@dataclass(frozen=True)
class JudgeParams:
    """The ``score.judge`` section and the judge client's config (one type for both). An API key
    is never stored here: see ``api``."""

    api: Literal["none", "ollama", "openai"] = "none"
    """none (offline metrics only; no network), ollama (POST {url}/api/chat) or openai (POST {url}/v1/chat/completions: vLLM, llama.cpp's server, `gptlab
    serve`, `litgpt serve`); an OpenAI-compatible server that needs a key gets $OPENAI_API_KEY, read at request time"""
    url: str = "http://127.0.0.1:11434"
    """the judge server's base URL (http:// or https://)"""
    model: str = "llama3"
    """the judge model's name on that server"""
    prompt: str | None = None
    """a str.format template over {prompt}, {instruction}, {input}, {output} and {response} (null: the built-in 0..100 scoring prompt)"""
    temperature: float = 0.0
    """the judge's sampling temperature (>= 0)"""
    timeout_s: float = 120.0
    """seconds per request (> 0)"""
    retries: int = 2
    """extra tries after a connection error, a timeout, HTTP 429 or 5xx (>= 0)"""
    backoff_s: float = 1.0
    """wait before retry n: backoff_s x 2**n seconds (>= 0)"""
    concurrency: int = 4
    """requests in flight at once (>= 1)"""
    num_ctx: int = 2048
    """context window the judge is asked to use (Ollama's num_ctx)"""
    seed: int = 123
    """the judge's sampling seed"""
    max_tokens: int | None = None
    """cap on the judge's reply in tokens (>= 1; null: the server's default)"""

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
class BootstrapParams:
    """The ``score.bootstrap`` section: the percentile bootstrap of per-record scores (each
    engine's mean and the paired fine-tuned minus base difference; gptlab.score.bootstrap)."""

    samples: int = 2000
    """resamples of the test records (>= 100; 2,000 puts the 95% bounds within ~0.002 of their limit on 99 records)"""
    seed: int = 1337
    """seed of the resampling (numpy PCG64): the same seed and scores give the same intervals"""
    confidence: float = 0.95
    """the interval's coverage, strictly between 0 and 1 (0.95: the 2.5th to 97.5th percentile)"""

    def __post_init__(self) -> None:
        if self.samples < 100:
            raise ParamsError(f"samples={self.samples} is too few for percentile bounds: use >= 100 (e.g. 2000)")
        if not 0 < self.confidence < 1:
            raise ParamsError(f"confidence={self.confidence} is impossible: must be strictly between 0 and 1, e.g. 0.95")
        if not 0 <= self.seed <= 2**32 - 1:
            raise ParamsError(f"seed={self.seed} is impossible: must be an integer from 0 to {2**32 - 1}")


@dataclass(frozen=True)
class ScoreParams:
    """The ``score`` section: offline metrics always, plus an optional LLM judge."""

    judge: JudgeParams = field(default_factory=JudgeParams)
    """the optional LLM judge"""
    bootstrap: BootstrapParams = field(default_factory=BootstrapParams)
    """the bootstrap intervals of the means and of the fine-tuned minus base difference"""
    loss_batch_size: int = 8
    """batch size of the model's loss on the reference outputs (>= 1; the reference_loss stages read it)"""

    def __post_init__(self) -> None:
        if self.loss_batch_size < 1:
            raise ParamsError(f"loss_batch_size={self.loss_batch_size} is impossible: must be >= 1")
