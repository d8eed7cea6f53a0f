"""The generation engine of ``gptlab serve``: one model and its tokenizer, requests generated in batches.

Testable without HTTP. Generation runs on one scheduler thread that batches the requests in
flight (up to ``max_batch`` rows; newcomers join at the next step boundary), each with its own
sampling, stop strings, streaming and budget, while the event loop stays free; every
generation can be cancelled between tokens (a client that left, streaming or not, frees its row).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import Row, SamplingConfig, stream
from gptlab.serve.errors import ApiError
from gptlab.serve.prompts import ChatMessage, Prompt, PromptBuilder, prompt_builder
from gptlab.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS_LIMIT = 1024
DISCONNECT_POLL_S = 0.05  # how often a non-streaming request checks that its client is still there
DEFAULT_MAX_BATCH = 8  # rows generated together (gptlab serve --max-batch)
BATCH_LOG = 1024  # batch sizes remembered (Engine.batch_sizes)
RESTART_TOKENS = 256  # a new batch may recompute this many tokens of the rows going on to let waiting requests in
_SPARE_WAITERS = 64  # threads for requests waiting in the queue beyond one batch (more wait for a thread, in order)


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


def sampling_config(
    max_tokens: int,
    limit: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    penalty_last_n: int | None = None,
) -> SamplingConfig:
    """Return the SamplingConfig of already-validated API values.

    ``max_tokens`` < 0 (Ollama's -1/-2) means up to ``limit``, and is capped at it; ``top_k``
    <= 0 and ``top_p`` >= 1 are off; ``top_p`` 0 keeps only the likeliest token (greedy); a
    penalty of None is off; ``penalty_last_n`` None: OpenAI's and Hugging Face's scopes, N:
    the last N tokens (see :class:`SamplingConfig`). An impossible value is an ApiError 400 naming it.
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
            min_p=min_p or None,
            repetition_penalty=1.0 if repetition_penalty is None else float(repetition_penalty),
            frequency_penalty=float(frequency_penalty or 0),
            presence_penalty=float(presence_penalty or 0),
            penalty_last_n=penalty_last_n,
        )
    except GptlabError as e:
        raise ApiError(400, str(e), param=str(e).split("=", 1)[0] if "=" in str(e) else None) from None


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


class _Request:
    """One request inside the engine: its prompt ``ids``, its :class:`Row` (sampling, generator, budget
    left), stop strings, streaming callback and cancel flag, and the answer so far (tokens and text).

    The scheduler feeds it tokens (:meth:`accept`) and ends it once (:meth:`end`); the caller waits on ``done``.
    """

    def __init__(self, ids: list[int], cfg: SamplingConfig, stop: list[str], on_text, cancelled, decoder, ends: set[int]):
        self.ids, self.cfg, self.stop, self.on_text, self.cancelled, self.decoder, self.ends = ids, cfg, stop, on_text, cancelled, decoder, ends
        self.row = Row(cfg)
        self.tokens: list[int] = []
        self.text, self.sent, self.finish, self.flush = "", 0, "length", True
        self.start = time.perf_counter()
        self.done = threading.Event()
        self.result: Completion | None = None
        self.error: BaseException | None = None

    def resume(self) -> tuple[list[int], Row]:
        """Return the prompt and Row that continue this request in a new batch: prompt + answer so far, the budget left."""
        self.row.cfg = dataclasses.replace(self.cfg, max_new_tokens=self.cfg.max_new_tokens - len(self.tokens))
        self.row.answered = len(self.tokens)
        return self.ids + self.tokens, self.row

    def accept(self, token: int, stopped: str | None) -> bool:
        """Take the next ``token`` (``stopped``: the engine's reason to end every request, if any); return True when the request is finished."""
        if token in self.ends:
            self.finish = "stop"
            return True
        self.tokens.append(token)
        self.text += self.decoder.add(token)
        cut = _stop_at(self.text, self.stop)
        if cut is not None:
            self.text, self.finish, self.flush = self.text[:cut], "stop", False
            return True
        if self.on_text is not None:
            safe = len(self.text) - _holdback(self.text, self.stop)
            if safe > self.sent:
                self.on_text(self.text[self.sent : safe])
                self.sent = safe
        if reason := stopped or self.left():
            self.finish = reason
            return True
        return len(self.tokens) >= self.cfg.max_new_tokens

    def left(self) -> str | None:
        """Return ``cancelled`` when the client left, else None."""
        return "cancelled" if self.cancelled is not None and self.cancelled.is_set() else None

    def end(self, reason: str | None = None, error: BaseException | None = None) -> None:
        """Finish the request (``reason`` overrides its finish reason): flush the text, send the rest, wake the caller."""
        if self.done.is_set():
            return
        if reason is not None:
            self.finish = reason
        try:
            if self.flush:  # bytes of a character cut short by the end come out as U+FFFD
                self.text += self.decoder.flush()
            if self.on_text is not None and len(self.text) > self.sent and error is None:
                self.on_text(self.text[self.sent :])
        finally:
            self.error = error
            self.result = Completion(self.text, len(self.ids), len(self.tokens), self.finish, time.perf_counter() - self.start)
            self.done.set()


class Engine:
    """One model and its tokenizer, generating for every request in batches on one scheduler thread.

    Requests wait in one FIFO queue; at a step boundary (one token for every row) the scheduler
    moves waiting requests into free rows, up to ``max_batch`` rows, so a request never waits
    behind more than ``max_batch`` others in flight. A new batch is the rows still running
    (prompt + answer so far, each with its own sampling, generator and budget) plus the newcomers,
    prefilled together: a row's tokens are the same as alone (greedy, and seeded sampling with its
    own generator), though its earlier tokens are computed again. So a new batch starts at the
    first step boundary where that recompute is cheap (at most ``RESTART_TOKENS``, or no more than
    the newcomers' own prompts) or half the rows are free, and only with newcomers that fit the
    context beside the others (longest prompt + longest budget: the window never slides). A row
    whose client left (or whose stop string came) is dropped at the next new batch; until then it
    costs compute, not waiting.

    ``prompt_style``: the style chat prompts are built in, as the model was fine-tuned (None:
    the tokenizer's ``chat_template`` if any, else alpaca; see :func:`gptlab.serve.prompts.prompt_builder`).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        prompt_style: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        if max_batch < 1:
            raise GptlabError(f"max_batch={max_batch} is impossible: must be >= 1 (--max-batch)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.prompt_style = prompt_style
        self.max_batch = max_batch
        self.builder: PromptBuilder = prompt_builder(tokenizer, prompt_style)
        # callers block here on their request (complete), so a waiting request costs a thread, not the model
        self.executor = ThreadPoolExecutor(max_workers=max_batch + _SPARE_WAITERS, thread_name_prefix="gptlab-request")
        self.prep_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptlab-prepare")  # templates, tokenizing
        self.closing = threading.Event()  # end every generation (shutdown)
        self.shut = threading.Event()  # close(): the scheduler thread ends once nothing is left
        self.queue: deque[_Request] = deque()
        self.wakeup = threading.Condition()
        self.scheduler: threading.Thread | None = None
        # rows of each recent batch the scheduler started (for tests and benchmarks; bounded: a long-running server keeps the last BATCH_LOG)
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_LOG)

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
        with self.wakeup:
            self.wakeup.notify_all()

    def encode(self, prompt: str | Prompt) -> list[int]:
        """Return the token ids of ``prompt``: plain text stays text; a templated Prompt's special tokens are tokens."""
        if isinstance(prompt, Prompt) and prompt.special_tokens:
            ids = self.tokenizer.encode(prompt.text, allowed_special="all")
        else:
            ids = self.tokenizer.encode_ordinary(prompt.text if isinstance(prompt, Prompt) else prompt)
        return ids or [self.tokenizer.eot_token]

    def complete(
        self,
        prompt: str | Prompt | list[int],
        cfg: SamplingConfig,
        stop: list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Completion:
        """Return the completion of ``prompt`` (a str is plain text: special-token text stays text; a list: token ids, e.g. a :class:`Job`'s).

        Blocks until the scheduler has generated it in a batch with the other requests in flight.
        ``on_text`` receives the text as it is generated (on the scheduler thread), in pieces that
        never include a stop string or the start of one; setting ``cancelled`` ends generation at
        the next token and frees the row.
        """
        ids = list(prompt) if isinstance(prompt, list) else self.encode(prompt)
        ends = set(self.tokenizer.stop_tokens)  # end-of-text and a chat model's end-of-turn ids
        request = _Request(ids, cfg, [s for s in (stop or []) if s], on_text, cancelled, self.tokenizer.decode_stream(), ends)
        if self.closing.is_set():
            request.end("shutdown")
        elif request.left():
            request.end()  # the client left (or the server stops) before the request reached the engine
        elif cfg.max_new_tokens <= 0:
            request.end("length")
        else:
            self._submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _submit(self, request: _Request) -> None:
        with self.wakeup:
            if self.scheduler is None:
                self.scheduler = threading.Thread(target=self._schedule, name="gptlab-generate", daemon=True)
                self.scheduler.start()
            self.queue.append(request)
            self.wakeup.notify()

    def _take(self, running: list[_Request]) -> list[_Request]:
        """Return the queued requests that start now beside ``running``, in arrival order: up to the free rows, and
        while the batch fits the context (longest prompt + longest budget left: the window never slides).
        Queued requests whose client left, or all of them when the server stops, are ended on the way."""
        taken: list[_Request] = []
        with self.wakeup:
            while self.queue and len(running) + len(taken) < self.max_batch:
                request = self.queue[0]
                if self.closing.is_set():
                    request.end("shutdown")
                elif reason := request.left():
                    request.end(reason)
                elif not self._fits(running + taken, request):
                    break  # it waits for rows to finish (in order: nobody overtakes it)
                else:
                    taken.append(request)
                self.queue.popleft()
        return taken

    def _fits(self, rows: list[_Request], request: _Request) -> bool:
        """Return True when ``request`` can join ``rows`` with the window never sliding: longest prompt + longest budget left <= the context."""
        if not rows:
            return True
        width = max(len(r.ids) + len(r.tokens) for r in [*rows, request])
        budget = max(r.cfg.max_new_tokens - len(r.tokens) for r in [*rows, request])
        return width + budget <= self.context_length

    def _worth_restarting(self, going: list[_Request]) -> bool:
        """Return True when a new batch should start now for the waiting requests: a row is free and either the rows
        going on are cheap to recompute (at most ``RESTART_TOKENS`` tokens, or no more than the newcomers' prompts)
        or half the rows are free."""
        free = self.max_batch - len(going)
        if not self.queue or free <= 0:
            return False
        with self.wakeup:
            for request in [r for r in self.queue if r.left()]:  # a client that left while waiting is answered now
                self.queue.remove(request)
                request.end("cancelled")
            waiting = list(self.queue)[:free]
        if not waiting or not self._fits(going, waiting[0]):
            return False
        recompute = sum(len(r.ids) + len(r.tokens) for r in going)
        return recompute <= max(sum(len(r.ids) for r in waiting), RESTART_TOKENS) or free >= max(1, self.max_batch // 2)

    def _schedule(self) -> None:
        """The scheduler thread: wait for requests, run batches, forever (a daemon; :meth:`close` ends it)."""
        running: list[_Request] = []
        while True:
            with self.wakeup:
                while not self.queue and not running and not self.shut.is_set():
                    self.wakeup.wait()
                if self.shut.is_set() and not self.queue and not running:
                    return
            running = [r for r in running if not r.done.is_set()]
            running += self._take(running)
            if running:
                self._run_batch(running)

    def _run_batch(self, running: list[_Request]) -> None:
        """Generate for ``running`` until every row is finished, or until a waiting request can take a free row (a step boundary)."""
        self.batch_sizes.append(len(running))
        prompts, rows = zip(*(r.resume() for r in running))
        ends = sorted(running[0].ends)
        try:
            for tokens, active in stream(self.model, list(prompts), list(rows), stop_tokens=ends):
                stopped = "shutdown" if self.closing.is_set() else None
                for request, token, on in zip(running, tokens, active):
                    if not request.done.is_set() and (not on or request.accept(token, stopped)):
                        request.end()
                going = [r for r in running if not r.done.is_set() and not r.left()]
                if not going:
                    break
                if self._worth_restarting(going):
                    break  # a step boundary: start a new batch with the waiting requests
        except Exception as e:  # the model failed: every request of the batch gets the error
            for request in running:
                request.end(error=e)
            return
        for request in running:
            if request.left() and not request.done.is_set():
                request.end("cancelled")

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
        """Stop the scheduler: queued generations end (``shutdown``) before they start, running ones at their next token."""
        self.closing.set()
        self.shut.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
        with self.wakeup:
            self.wakeup.notify_all()
        if self.scheduler is not None:
            self.scheduler.join(timeout=30)
        self.executor.shutdown(wait=True)
        self.prep_executor.shutdown(wait=True, cancel_futures=True)
