"""The generation engine of ``gptlab serve``: one model and its tokenizer behind a lock.

Testable without HTTP. Generation runs on one worker thread, so concurrent requests queue
and never mix their tokens while the event loop stays free; every generation can be
cancelled between tokens (a client that left, streaming or not, frees the model at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, stream
from gptlab.serve.errors import ApiError
from gptlab.serve.prompts import ChatMessage, Prompt, PromptBuilder, prompt_builder
from gptlab.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS_LIMIT = 1024
DISCONNECT_POLL_S = 0.05  # how often a non-streaming request checks that its client is still there


@dataclass(frozen=True)
class Completion:
    """One finished generation: the new ``text``, token counts, ``finish_reason``
    (``stop``: end-of-text or a stop string; ``length``: token budget or context; ``cancelled``:
    the client left; ``shutdown``: the server stopped it at the end of its grace period) and
    ``seconds`` spent (wall clock, under the lock)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


@dataclass(frozen=True)
class Job:
    """A request ready to generate: the prompt's token ``ids`` (as used: after any truncation), its
    SamplingConfig (``max_new_tokens`` capped so prompt + answer fit the context), and how many
    prompt tokens were ``dropped`` from the start by a truncation the request asked for."""

    ids: list[int]
    cfg: SamplingConfig
    dropped: int = 0


def fit_context(ids: list[int], cfg: SamplingConfig, context: int, keep: int | None = None, field: str = "prompt") -> Job:
    """Return the Job of prompt ``ids`` in a model of ``context`` tokens: prompt + answer never exceed it.

    ``keep`` (the request asked for truncation): keep only the prompt's last ``keep`` tokens
    (``keep`` <= 0: leave room for the answer, as much as ``max_new_tokens`` up to half the
    context). Without it a prompt that leaves no room for one new token is an ApiError 400
    naming both lengths (``field``: the request's prompt field). ``max_new_tokens`` is then capped at the room left, so the window
    never slides (each token past it would recompute the whole window).
    """
    n = len(ids)
    if keep is not None:
        keep = keep if keep > 0 else context - min(max(cfg.max_new_tokens, 1), context // 2)
        if keep > context:
            raise ApiError(
                400, f"truncate_prompt_tokens={keep} is over the model's context of {context} tokens; send at most {context}", param="truncate_prompt_tokens"
            )
        ids = ids[-keep:]
    if len(ids) > context or (len(ids) == context and cfg.max_new_tokens > 0):
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens and the model's context is {context} tokens, leaving no room for an answer; "
            'shorten the prompt or ask for truncation (Ollama: "truncate": true; OpenAI: "truncate_prompt_tokens": N)',
            param=field,
            code="context_length_exceeded",
        )
    room = context - len(ids)
    if cfg.max_new_tokens > room:
        cfg = dataclasses.replace(cfg, max_new_tokens=room)
    return Job(list(ids), cfg, n - len(ids))


def sampling_config(max_tokens: int, limit: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None) -> SamplingConfig:
    """Return the SamplingConfig of already-validated API values.

    ``max_tokens`` < 0 (Ollama's -1/-2) means up to ``limit``, and is capped at it; ``top_k``
    <= 0 and ``top_p`` >= 1 are off; ``top_p`` 0 keeps only the likeliest token (greedy).
    """
    if max_tokens < 0:
        max_tokens = limit
    if top_p is not None and top_p <= 0:
        temperature, top_p = 0.0, None
    try:
        return SamplingConfig(
            max_new_tokens=min(max_tokens, limit),
            temperature=float(temperature),
            top_k=top_k if top_k is not None and top_k > 0 else None,
            top_p=top_p if top_p is not None and top_p < 1 else None,
            seed=None if seed is None else seed % 2**63,
        )
    except GptlabError as e:
        raise ApiError(400, str(e)) from None


def _stop_at(text: str, stops: list[str]) -> int | None:
    """Index where the first stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _holdback(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may begin a stop string (not safe to send yet)."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


class Engine:
    """One model and its tokenizer behind a lock, generating on one worker thread.

    ``prompt_style``: the style chat prompts are built in, as the model was fine-tuned (None:
    the tokenizer's ``chat_template`` if any, else alpaca; see :func:`gptlab.serve.prompts.prompt_builder`).
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT, prompt_style: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.prompt_style = prompt_style
        self.builder: PromptBuilder = prompt_builder(tokenizer, prompt_style)
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptlab-generate")
        self.prep_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptlab-prepare")  # templates, tokenizing
        self.closing = threading.Event()

    @property
    def context_length(self) -> int:
        """Return the model's context length in tokens."""
        return int(self.model.config.context_length)

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Return the prompt for chat ``messages`` (the tokenizer's chat template, bounded, or the instruction style)."""
        return self.builder(messages)

    def job(self, prompt: str | Prompt | Sequence[ChatMessage], cfg: SamplingConfig, keep: int | None = None, field: str = "prompt") -> Job:
        """Return the :class:`Job` of ``prompt`` (text, or chat messages to render): encoded and fit to the context (:func:`fit_context`)."""
        if not isinstance(prompt, (str, Prompt)):
            prompt = self.chat_prompt(prompt)
        return fit_context(self.encode(prompt), cfg, self.context_length, keep, field)

    async def prepare(self, prompt: str | Prompt | Sequence[ChatMessage], cfg: SamplingConfig, keep: int | None = None, field: str = "prompt") -> Job:
        """Return :meth:`job` run on a helper thread: the event loop keeps answering while a template renders
        or a long prompt is tokenized, and neither waits behind a generation. ApiError 400/422 as it says."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.prep_executor, self.job, prompt, cfg, keep, field)

    def interrupt(self) -> None:
        """End every generation at its next token (finish reason ``shutdown``) and every queued one before it starts."""
        self.closing.set()

    def encode(self, prompt: str | Prompt) -> list[int]:
        """Return the token ids of ``prompt``: plain text stays text; a templated Prompt's special tokens are tokens."""
        if isinstance(prompt, Prompt) and prompt.special_tokens:
            ids = self.tokenizer.encode(prompt.text, allowed_special="all")
        else:
            ids = self.tokenizer.encode_ordinary(prompt.text if isinstance(prompt, Prompt) else prompt)
        return ids or [self.tokenizer.eot_token]

    def _stopped(self, cancelled: threading.Event | None) -> str | None:
        if self.closing.is_set():
            return "shutdown"
        return "cancelled" if cancelled is not None and cancelled.is_set() else None

    def complete(
        self,
        prompt: str | Prompt | list[int],
        cfg: SamplingConfig,
        stop: list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Completion:
        """Return the completion of ``prompt`` (a str is plain text: special-token text stays text; a list: token ids, e.g. a :class:`Job`'s).

        ``on_text`` receives the text as it is generated, in pieces that never include a stop
        string or the start of one; setting ``cancelled`` ends generation at the next token.
        """
        stop = [s for s in (stop or []) if s]
        ends = set(self.tokenizer.stop_tokens)  # end-of-text and a chat model's end-of-turn ids
        with self.lock:
            start = time.perf_counter()
            ids = list(prompt) if isinstance(prompt, list) else self.encode(prompt)
            decoder = self.tokenizer.decode_stream()
            text, sent, n, finish, flush = "", 0, 0, "length", True
            if reason := self._stopped(cancelled):
                finish = reason  # the client left (or the server stops) while this request waited for the model
            elif cfg.max_new_tokens > 0:
                for tokens, _ in stream(self.model, [ids], cfg, stop_tokens=sorted(ends)):
                    token = int(tokens[0])
                    if token in ends:
                        finish = "stop"
                        break
                    n += 1
                    text += decoder.add(token)
                    cut = _stop_at(text, stop)
                    if cut is not None:
                        text, finish, flush = text[:cut], "stop", False
                        break
                    if on_text is not None:
                        safe = len(text) - _holdback(text, stop)
                        if safe > sent:
                            on_text(text[sent:safe])
                            sent = safe
                    if reason := self._stopped(cancelled):
                        finish = reason
                        break
            if flush:  # bytes of a character cut short by the end come out as U+FFFD
                text += decoder.flush()
            if on_text is not None and len(text) > sent:
                on_text(text[sent:])
            return Completion(text, len(ids), n, finish, time.perf_counter() - start)

    async def complete_async(self, prompt: str | Prompt, cfg: SamplingConfig, stop: list[str], gone: Callable[[], Awaitable[bool]] | None = None) -> Completion:
        """Return :meth:`complete` run on the worker thread (the event loop stays free).

        ``gone`` (e.g. Starlette's ``request.is_disconnected``) is polled every
        ``DISCONNECT_POLL_S`` while the request waits or generates; once it says True the
        generation is cancelled at its next token (or never starts) and frees the model.
        """
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        future = loop.run_in_executor(self.executor, self.complete, prompt, cfg, stop, None, cancelled)
        try:
            if gone is not None:
                while not future.done():
                    await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                    if not future.done() and await gone():
                        cancelled.set()
                        break
            return await future
        finally:
            cancelled.set()

    async def pieces(self, prompt: str | Prompt, cfg: SamplingConfig, stop: list[str]) -> AsyncIterator[str | Completion]:
        """Yield text pieces as they are generated, then the :class:`Completion`.

        Generation runs on the worker thread; if the consumer goes away (client disconnect),
        it is told to stop at the next token.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancelled = threading.Event()

        def on_text(piece: str) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
            except RuntimeError:  # the loop is gone: nobody listens any more
                cancelled.set()

        future = loop.run_in_executor(self.executor, self.complete, prompt, cfg, stop, on_text, cancelled)
        future.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            yield await future
        finally:
            cancelled.set()

    def close(self) -> None:
        """Stop the worker thread: queued generations are dropped, a running one ends at its next token."""
        self.closing.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.prep_executor.shutdown(wait=True, cancel_futures=True)
