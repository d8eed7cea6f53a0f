"""HTTP server for a gptlab model, speaking Ollama's and OpenAI's APIs (FastAPI + uvicorn).

Endpoints: Ollama ``POST /api/generate``, ``POST /api/chat``, ``GET /api/tags``,
``GET /api/version``; OpenAI ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``. Streaming follows each API: Ollama sends NDJSON lines (``done`` false,
then one line with ``done`` true and the counts; streaming is Ollama's default), OpenAI sends
server-sent events ``data: {...}`` ending with ``data: [DONE]`` (when ``stream: true``).

Prompts. ``/v1/completions`` and ``/api/generate`` with ``raw: true`` continue the text as
given. Chat, and ``/api/generate`` without ``raw`` (as Ollama applies a model's template),
use the instruction prompt style (:func:`gptlab.data.instructions.format_prompt`, alpaca):
the last user message is the instruction; the messages before it (system, earlier user and
assistant turns, in order) are folded into the ``### Input:`` block as ``System: ...``,
``User: ...``, ``Assistant: ...`` paragraphs; messages after it (an assistant prefill) are
appended after ``### Response:`` for the model to continue. ``/api/generate``'s ``system``
is a leading system message.

Sampling maps onto :class:`gptlab.generate.SamplingConfig` and :func:`gptlab.generate.stream`:
``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``seed``, ``max_tokens`` /
``max_completion_tokens`` / ``num_predict`` (capped at ``max_tokens_limit``), ``stop``
strings. Generation ends at ``<|endoftext|>`` (``finish_reason``/``done_reason`` ``stop``),
a stop string (cut out of the text, ``stop``) or the token budget (``length``). Defaults
follow each API: Ollama temperature 0.8, top_k 40, top_p 0.9, num_predict 128; OpenAI
temperature 1, max_tokens 16 for completions and ``max_tokens_limit`` for chat.

Safety. The server binds 127.0.0.1 unless told otherwise; bodies over ``max_body_bytes``
get 413, bad JSON or values 400, an unknown model 404, each as JSON in the API's own error
shape (Ollama ``{"error": "..."}``, OpenAI ``{"error": {"message", "type", "param", "code"}}``).
The one model is used by one worker thread under a lock, so concurrent requests queue and
never mix their tokens, and the event loop stays free to answer others meanwhile.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab import __version__
from gptlab.data.instructions import format_prompt
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, stream
from gptlab.tokenizer import Tokenizer, token_bytes

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt fits in the context
DEFAULT_MAX_TOKENS_LIMIT = 1024
_DRAIN_FACTOR = 8  # an oversized body is read (and dropped) up to this many limits before the 413
_OPENAI_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error"}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class Completion:
    """One finished generation: the new ``text``, token counts, ``finish_reason``
    (``stop``: end-of-text or a stop string; ``length``: token budget; ``cancelled``) and
    ``seconds`` spent (wall clock, under the lock)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


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
    """One model and its tokenizer behind a lock, generating on one worker thread."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptlab-generate")
        self.closing = threading.Event()

    def complete(
        self,
        prompt: str,
        cfg: SamplingConfig,
        stop: list[str] | None = None,
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Completion:
        """Return the completion of ``prompt`` (plain text; special-token text stays text).

        ``on_text`` receives the text as it is generated, in pieces that never include a stop
        string or the start of one; setting ``cancelled`` ends generation at the next token.
        """
        stop = [s for s in (stop or []) if s]
        eot = self.tokenizer.eot_token
        with self.lock:
            start = time.perf_counter()
            ids = self.tokenizer.encode_ordinary(prompt) or [eot]
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            text, sent, n, finish, flush = "", 0, 0, "length", True
            if self.closing.is_set() or (cancelled is not None and cancelled.is_set()):
                finish = "cancelled"  # the client left while this request waited for the model
            elif cfg.max_new_tokens > 0:
                for tokens, _ in stream(self.model, [ids], cfg, stop_tokens=[eot]):
                    token = int(tokens[0])
                    if token == eot:
                        finish = "stop"
                        break
                    n += 1
                    text += decoder.decode(token_bytes(self.tokenizer, token))
                    cut = _stop_at(text, stop)
                    if cut is not None:
                        text, finish, flush = text[:cut], "stop", False
                        break
                    if on_text is not None:
                        safe = len(text) - _holdback(text, stop)
                        if safe > sent:
                            on_text(text[sent:safe])
                            sent = safe
                    if self.closing.is_set() or (cancelled is not None and cancelled.is_set()):
                        finish = "cancelled"
                        break
            if flush:  # bytes of a character cut short by the end come out as U+FFFD
                text += decoder.decode(b"", final=True)
            if on_text is not None and len(text) > sent:
                on_text(text[sent:])
            return Completion(text, len(ids), n, finish, time.perf_counter() - start)

    async def complete_async(self, prompt: str, cfg: SamplingConfig, stop: list[str]) -> Completion:
        """Return :meth:`complete` run on the worker thread (the event loop stays free)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.complete, prompt, cfg, stop)

    async def pieces(self, prompt: str, cfg: SamplingConfig, stop: list[str]) -> AsyncIterator[str | Completion]:
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


# ---------------------------------------------------------------- request parsing


def _text_of(content: object, where: str) -> str:
    """Text of a message ``content``: a string, or OpenAI's list of ``{type: text, text}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                raise ApiError(400, f"{where}: only text content parts are supported", param="messages")
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def chat_prompt(messages: object, style: str = "alpaca") -> str:
    """Return the instruction prompt for chat ``messages`` (see the module docstring for the folding)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string role", param="messages")
        turns.append((m["role"], _text_of(m.get("content"), f"messages[{i}]")))
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not users:
        raise ApiError(400, "messages contain no user message to answer", param="messages")
    last = users[-1]
    context = "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns[:last] if text.strip())
    prefill = "".join(text for _, text in turns[last + 1 :])
    return format_prompt(turns[last][1], context, style=style) + prefill


def _number(source: dict, key: str, default, integer: bool = False, where: str = ""):
    """Return ``source[key]`` checked to be a number (an int if ``integer``), or ``default`` if absent/null."""
    value = source.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise ApiError(400, f"{where}{key} must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}", param=key)
    return value


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise ApiError(400, "stop must be a string or a list of strings", param="stop")


def _sampling(max_tokens: int, limit: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None) -> SamplingConfig:
    if max_tokens < 0:
        max_tokens = limit  # Ollama's -1 (-2): until the end
    try:
        return SamplingConfig(
            max_new_tokens=min(max_tokens, limit),
            temperature=float(temperature),
            top_k=top_k if top_k is not None and top_k > 0 else None,
            top_p=top_p if top_p is not None and 0 < top_p < 1 else None,
            seed=None if seed is None else seed % 2**63,
        )
    except GptlabError as e:
        raise ApiError(400, str(e)) from None


def ollama_sampling(body: dict, limit: int) -> tuple[SamplingConfig, list[str]]:
    """Return the sampling config and stop strings of an Ollama request (its ``options``)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object")
    w = "options."
    cfg = _sampling(
        _number(options, "num_predict", 128, True, w),
        limit,
        _number(options, "temperature", 0.8, where=w),
        _number(options, "top_k", 40, True, w),
        _number(options, "top_p", 0.9, where=w),
        _number(options, "seed", None, True, w),
    )
    return cfg, _stops(options.get("stop"))


def openai_sampling(body: dict, limit: int, default_max_tokens: int) -> tuple[SamplingConfig, list[str]]:
    """Return the sampling config and stop strings of an OpenAI request."""
    if _number(body, "n", 1, True) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = _number(body, "max_completion_tokens", None, True)
    max_tokens = _number(body, "max_tokens", default_max_tokens if max_tokens is None else max_tokens, True)
    if max_tokens < 0:
        raise ApiError(400, f"max_tokens must be >= 0, got {max_tokens}", param="max_tokens")
    temperature = _number(body, "temperature", 1.0)
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}", param="temperature")
    cfg = _sampling(max_tokens, limit, temperature, _number(body, "top_k", None, True), _number(body, "top_p", None), _number(body, "seed", None, True))
    return cfg, _stops(body.get("stop"))


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return value


def _string(body: dict, key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string", param=key)
    return value


# ---------------------------------------------------------------- the app


def _error(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """Return an error response in the shape of the API ``path`` belongs to."""
    if path.startswith("/v1"):
        content: dict = {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param, "code": code}}
    else:
        content = {"error": message}
    return JSONResponse(content, status_code=status)


async def _json_body(request: Request, limit: int) -> dict:
    """Return the request's JSON object; ApiError 413 past ``limit`` bytes, 400 if not a JSON object."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            body.clear()
            if size > limit * _DRAIN_FACTOR:
                break
        else:
            body += chunk
    if too_big:
        raise ApiError(413, f"request body of {declared or size} bytes exceeds the limit of {limit} bytes; send a shorter prompt")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def create_app(
    model: GPT,
    tokenizer: Tokenizer,
    model_name: str = "gptlab",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    prompt_style: str = "alpaca",
) -> FastAPI:
    """Return the FastAPI app serving ``model`` under ``model_name`` (also ``model_name:latest``)."""
    try:
        format_prompt("check", style=prompt_style)
    except ValueError as e:
        raise GptlabError(f"serve: {e}") from None
    engine = Engine(model, tokenizer, max_tokens_limit)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="gptlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    names = {model_name, f"{model_name}:latest"}
    created = int(time.time())
    n_params = model.num_parameters()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(request.url.path, exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request.url.path, exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(request.url.path, 500, f"generation failed: {type(exc).__name__}: {exc}")

    def check_model(body: dict, openai: bool) -> None:
        name = body.get("model")
        if name is None or name == "":
            return
        if not isinstance(name, str):
            raise ApiError(400, "model must be a string", param="model")
        if name not in names:
            if openai:
                raise ApiError(404, f"The model `{name}` does not exist; this server has `{model_name}`", param="model", code="model_not_found")
            raise ApiError(404, f'model "{name}" not found; this server has "{model_name}"')

    def ollama_final(c: Completion) -> dict:
        return {
            "model": model_name,
            "created_at": _now_iso(),
            "done": True,
            "done_reason": "length" if c.finish_reason == "length" else "stop",
            "total_duration": int(c.seconds * 1e9),
            "load_duration": 0,
            "prompt_eval_count": c.prompt_tokens,
            "eval_count": c.completion_tokens,
            "eval_duration": int(c.seconds * 1e9),
        }

    def usage(c: Completion) -> dict:
        return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens}

    async def ollama_reply(prompt: str, body: dict, chat: bool) -> Response:
        cfg, stop = ollama_sampling(body, engine.max_tokens_limit)

        def piece(text: str) -> dict:
            if chat:
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        if not _flag(body, "stream", True):
            c = await engine.complete_async(prompt, cfg, stop)
            return JSONResponse({**ollama_final(c), **piece(c.text), "model": model_name})

        async def lines() -> AsyncIterator[str]:
            try:
                async for item in engine.pieces(prompt, cfg, stop):
                    if isinstance(item, Completion):
                        yield json.dumps({**ollama_final(item), **piece("")}) + "\n"
                    else:
                        yield json.dumps({"model": model_name, "created_at": _now_iso(), **piece(item), "done": False}) + "\n"
            except Exception as e:  # headers are gone: report in-band, as Ollama does
                yield json.dumps({"error": f"generation failed: {e}"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def openai_reply(prompt: str, body: dict, chat: bool, default_max_tokens: int) -> Response:
        cfg, stop = openai_sampling(body, engine.max_tokens_limit, default_max_tokens)
        kind = "chat.completion" if chat else "text_completion"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        stamp = int(time.time())

        def finish(c: Completion) -> str:
            return "length" if c.finish_reason == "length" else "stop"

        if not _flag(body, "stream", False):
            c = await engine.complete_async(prompt, cfg, stop)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None, "finish_reason": finish(c)}
            else:
                choice = {"index": 0, "text": c.text, "logprobs": None, "finish_reason": finish(c)}
            return JSONResponse({"id": ident, "object": kind, "created": stamp, "model": model_name, "choices": [choice], "usage": usage(c)})

        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        def chunk(delta: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                d: dict = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}
            return envelope([choice])

        def envelope(choices: list, **extra) -> str:
            data = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": stamp, "model": model_name, "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk(None, None, first=True)
                async for item in engine.pieces(prompt, cfg, stop):
                    if isinstance(item, Completion):
                        yield chunk(None, finish(item))
                        if include_usage:
                            yield envelope([], usage=usage(item))
                    else:
                        yield chunk(item, None)
            except Exception as e:  # headers are gone: report in-band
                yield f"data: {json.dumps({'error': {'message': f'generation failed: {e}', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse(f"gptlab is running ({model_name}; Ollama API under /api, OpenAI API under /v1)")

    @app.get("/api/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/api/tags")
    async def tags() -> dict:
        details = {"format": "safetensors", "family": "gpt2", "families": ["gpt2"], "parameter_size": f"{n_params / 1e6:.1f}M", "quantization_level": "F32"}
        entry = {"name": model_name, "model": model_name, "modified_at": _now_iso(), "size": n_params * 4, "digest": "", "details": details}
        return {"models": [entry]}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "gptlab"}]}

    @app.post("/api/generate")
    async def ollama_generate(request: Request) -> Response:
        body = await _json_body(request, max_body_bytes)
        check_model(body, openai=False)
        prompt, system = _string(body, "prompt"), _string(body, "system")
        if not prompt and not system:  # Ollama's "load the model" call
            return JSONResponse({"model": model_name, "created_at": _now_iso(), "response": "", "done": True, "done_reason": "load"})
        if not _flag(body, "raw", False):
            turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            prompt = chat_prompt(turns, prompt_style)
        return await ollama_reply(prompt, body, chat=False)

    @app.post("/api/chat")
    async def ollama_chat(request: Request) -> Response:
        body = await _json_body(request, max_body_bytes)
        check_model(body, openai=False)
        return await ollama_reply(chat_prompt(body.get("messages"), prompt_style), body, chat=True)

    @app.post("/v1/completions")
    async def openai_completions(request: Request) -> Response:
        body = await _json_body(request, max_body_bytes)
        check_model(body, openai=True)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
        return await openai_reply(prompt, body, chat=False, default_max_tokens=16)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        body = await _json_body(request, max_body_bytes)
        check_model(body, openai=True)
        return await openai_reply(chat_prompt(body.get("messages"), prompt_style), body, chat=True, default_max_tokens=engine.max_tokens_limit)

    return app


def build_app(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    model_name: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
) -> FastAPI:
    """Return the app serving the checkpoint in ``model_dir`` (CPU).

    With ``adapter_dir`` the LoRA adapters there are loaded and merged into the weights
    first. ``model_name`` defaults to the folder's name (``models/finetuned`` -> ``finetuned``).
    """
    from gptlab.lora import load_merged

    model, tokenizer = load_merged(model_dir, adapter_dir)
    name = model_name or Path(model_dir).resolve().name
    return create_app(model.eval(), tokenizer, name, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit)


def _bind(host: str, port: int) -> socket.socket:
    """Return a listening TCP socket on ``host:port`` (port 0: a free one), or GptlabError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GptlabError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or stop what uses it") from None
    sock.listen(2048)
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its base URL (``http://host:port``).

    ``port`` 0 picks a free port. On exit the server is told to stop, open connections get
    up to 5 s, and the thread is joined, so the port is closed afterwards.
    """
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gptlab-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise GptlabError(f"the server on {_base_url(sock)} did not start within {start_timeout_s} s")
            time.sleep(0.01)
        yield _base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def serve(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 11434,
    model_name: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    threads: int | None = None,
) -> None:
    """Serve the model in ``model_dir`` on ``host:port`` until interrupted (Ctrl-C); returns None.

    Loopback by default: pass ``host="0.0.0.0"`` only on a trusted network (there is no auth).
    ``threads`` sets torch's intra-op threads for this process; 1 is much faster for small
    models on a busy machine (a 4-token reply of a tiny model: 9 ms with 1, 230 ms with 2
    threads on 2 cores shared with other jobs).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    app = build_app(model_dir, adapter_dir, model_name, max_body_bytes, max_tokens_limit)
    sock = _bind(host, port)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)).run(sockets=[sock])
    finally:
        sock.close()
