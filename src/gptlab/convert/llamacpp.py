"""llama.cpp in this process, through its prebuilt wheel ``xllamacpp`` (the optional ``test``
extra): load a GGUF file, decode greedily, score a text. The interop test and
``bench/inference.py`` hold gptlab's GGUF exports against what llama.cpp itself computes.

``xllamacpp.Server`` runs llama.cpp's own ``llama-server`` in a thread, listening on
127.0.0.1; requests go to its native ``/completion`` route, token ids in and out (so no
tokenizer stands between the two sides). A text's log-likelihood is read one token at a time:
each request asks for one token after the text's prefix with that token forced by
``logit_bias``, and llama.cpp reports the token's log-probability under the raw logits (before
any sampler); the prefix stays in llama.cpp's cache, so each step decodes one token.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.errors import GptlabError


@dataclass(frozen=True)
class Completion:
    """What llama.cpp answered: the new token ids, their text, and its own timings (ms)."""

    tokens: list[int]
    text: str
    prompt_ms: float  # prefill time of the uncached prompt tokens
    predicted_ms: float  # decode time of the new tokens
    timings: dict = field(default_factory=dict, repr=False)

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second of decoding (prefill excluded), as llama.cpp measured it."""
        n = max(len(self.tokens) - 1, 1)  # the first token comes with the prefill
        return n / (self.predicted_ms / 1e3) if self.predicted_ms > 0 else float("nan")


class LlamaCpp:
    """A GGUF file loaded by llama.cpp (``xllamacpp.Server``) with ``threads`` CPU threads, a
    context of ``n_ctx`` tokens and ``parallel`` slots; use as a context manager, or :meth:`close`.

    ImportError (``xllamacpp``) when the wheel is not installed."""

    def __init__(self, gguf_path: str | Path, n_ctx: int = 512, threads: int = 2, parallel: int = 1):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path)
        params.n_ctx = n_ctx * parallel  # llama-server splits the context between its slots
        params.n_parallel = parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        self.path = Path(gguf_path)
        self._server = xllamacpp.Server(params)
        self.url = self._server.listening_address

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop llama.cpp's server thread and free the model."""
        self._server = None

    def post(self, route: str, body: dict) -> dict:
        """Return llama-server's JSON answer to ``body`` at ``route`` (e.g. ``/completion``)."""
        request = urllib.request.Request(self.url + route, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise GptlabError(f"{self.path}: llama.cpp answered {e.code} to {route}: {e.read()[:300]!r}") from None

    def greedy(self, ids: list[int], max_new_tokens: int, cache: bool = False) -> Completion:
        """Return llama.cpp's greedy continuation of token ids ``ids``: exactly ``max_new_tokens``
        new tokens (end-of-text does not stop it). ``cache``: reuse the KV cache of an earlier
        request with the same prefix (off: the prompt is prefilled anew, so timings compare)."""
        body = {
            "prompt": ids,
            "n_predict": max_new_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_tokens": True,
            "cache_prompt": cache,
        }
        r = self.post("/completion", body)
        t = r.get("timings") or {}
        return Completion(list(r["tokens"]), r["content"], float(t.get("prompt_ms", "nan")), float(t.get("predicted_ms", "nan")), t)

    def token_logprobs(self, ids: list[int]) -> list[float]:
        """Return ``log p(ids[i] | ids[:i])`` for i = 1 .. len(ids) - 1 (natural log), as llama.cpp
        computes them. Each token must be a whole UTF-8 text (llama.cpp reports no probability for a
        token holding part of a character): use ASCII text."""
        out = []
        for i in range(1, len(ids)):
            body = {"prompt": ids[:i], "n_predict": 1, "temperature": 0.0, "n_probs": 1, "logit_bias": [[ids[i], 1000.0]], "cache_prompt": True}
            probs = self.post("/completion", body).get("completion_probabilities") or []
            if not probs or probs[0].get("id") != ids[i]:
                raise GptlabError(f"{self.path}: llama.cpp gave no log-probability for token {ids[i]} at position {i}; score an ASCII text")
            out.append(float(probs[0]["logprob"]))
        return out

    def perplexity(self, ids: list[int]) -> float:
        """Return the perplexity of ``ids`` (every token after the first predicted) under llama.cpp."""
        lp = self.token_logprobs(ids)
        return math.exp(-sum(lp) / len(lp))
