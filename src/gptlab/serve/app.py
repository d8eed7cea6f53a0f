"""The ``gptlab serve`` app: both API routers, the Host/Origin guard, errors, and the runners.

Safety. The server binds 127.0.0.1 unless told otherwise and then answers only loopback
``Host`` names and same-origin (or no) ``Origin`` (see :mod:`gptlab.serve.guard`); bodies
over ``max_body_bytes`` get 413, bad JSON or values 400 naming the parameter, an unknown
model 404, each as JSON in the API's own error shape (Ollama ``{"error": "..."}``, OpenAI
``{"error": {"message", "type", "param", "code"}}``).

Shutdown (SIGTERM, Ctrl-C): no new connection is accepted; requests in flight get a grace
period (``--grace``, default ``DEFAULT_GRACE_S``) to finish, then their generations stop at
the next token and each answer ends properly: a stream with its final chunk
(``finish_reason``/``done_reason`` ``shutdown``) and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab import __version__
from gptlab.data.prompts import model_prompt_style
from gptlab.errors import GptlabError
from gptlab.inference import prepare
from gptlab.lora import load_merged
from gptlab.model import GPT
from gptlab.serve import ollama, openai
from gptlab.serve.body import DEFAULT_MAX_BODY_BYTES
from gptlab.serve.common import Served
from gptlab.serve.engine import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS_LIMIT, Engine
from gptlab.serve.errors import ApiError, error_response
from gptlab.serve.guard import HostOriginGuard, default_allowed_hosts
from gptlab.tokenizer import Tokenizer

DEFAULT_GRACE_S = 10.0  # seconds in-flight requests may run on after a SIGTERM
_CLOSE_MARGIN_S = 3.0  # then the stopped generations get this long to send their final chunks
log = logging.getLogger("uvicorn.error")


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains on shutdown: requests in flight run on for ``grace_s`` seconds,
    then the engine stops their generations at the next token so every answer ends with its final chunk."""

    def __init__(self, config: uvicorn.Config, engine: Engine | None, grace_s: float = DEFAULT_GRACE_S):
        config.timeout_graceful_shutdown = int(grace_s + _CLOSE_MARGIN_S + 0.999)
        super().__init__(config)
        self.engine, self.grace_s = engine, grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, let requests in flight finish within the grace period, then end them; returns None."""
        busy = len(self.server_state.tasks)
        if busy:
            log.info("draining %d request(s) in flight for up to %g s", busy, self.grace_s)
        timer = asyncio.get_running_loop().call_later(self.grace_s, self.engine.interrupt) if self.engine else None
        try:
            await super().shutdown(sockets)
        finally:
            if timer:
                timer.cancel()


def create_app(
    model: GPT,
    tokenizer: Tokenizer,
    model_name: str = "gptlab",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    prompt_style: str | None = None,
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
) -> FastAPI:
    """Return the FastAPI app serving ``model`` under ``model_name`` (also ``model_name:latest``).

    ``prompt_style``: the model's instruction style (None: its chat template, else alpaca; see
    :func:`gptlab.serve.prompts.prompt_builder`);
    ``allowed_hosts``: Host names answered besides loopback ones (``*``: any);
    ``allowed_origins``: browser origins allowed to call it (``*``: any), who also get CORS headers;
    ``max_batch``: requests generated together at most (the engine's rows; more wait in order).
    """
    engine = Engine(model, tokenizer, max_tokens_limit, prompt_style, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="gptlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.served = Served(engine, model_name, max_body_bytes)
    app.include_router(ollama.router)
    app.include_router(openai.router)
    origins = list(allowed_origins)
    if origins:  # the browser needs these to read answers and to preflight JSON POSTs
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])
    app.add_middleware(HostOriginGuard, allowed_hosts=list(allowed_hosts), allowed_origins=origins)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(GptlabError)  # bad input met while answering: the client's request
    async def _bad_input(request: Request, exc: GptlabError) -> JSONResponse:
        return error_response(request.url.path, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 400, f"{request.method} {request.url.path}: {exc.errors()[0].get('msg', 'bad request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, 500, f"generation failed: {type(exc).__name__}: {exc}")

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse(f"gptlab is running ({model_name}; Ollama API under /api, OpenAI API under /v1)")

    return app


def build_app(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    model_name: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    max_batch: int = DEFAULT_MAX_BATCH,
    weights: str = "fp32",
    compile: bool | str = "auto",
) -> FastAPI:
    """Return the app serving the checkpoint in ``model_dir`` (CPU); ``max_batch``: requests generated together at most.

    With ``adapter_dir`` the LoRA adapters there are loaded and merged into the weights
    first; ``weights`` and ``compile`` are those of :func:`gptlab.inference.prepare`. ``model_name`` defaults to the folder's name (``models/finetuned`` -> ``finetuned``).
    Chat prompts take the prompt style recorded in ``model_dir`` (as fine-tuned), if any.
    """
    model, tokenizer = load_merged(model_dir, adapter_dir)
    name = model_name or Path(model_dir).resolve().name
    return create_app(
        prepare(model, weights, compile),
        tokenizer,
        name,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
        prompt_style=model_prompt_style(model_dir),
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        max_batch=max_batch,
    )


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
def running_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", start_timeout_s: float = 30.0, grace_s: float = 5.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its base URL (``http://host:port``).

    ``port`` 0 picks a free port. On exit the server is told to stop, requests in flight get
    ``grace_s`` seconds (then end with their final chunks), and the thread is joined, so the
    port is closed afterwards.
    """
    sock = _bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on")
    server = DrainingServer(config, getattr(app.state, "engine", None), grace_s)  # any ASGI app (tests serve fake judges too)
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
        thread.join(timeout=grace_s + 15)
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
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    max_batch: int = DEFAULT_MAX_BATCH,
    weights: str = "fp32",
    compile: bool | str = "auto",
) -> None:
    """Serve the model in ``model_dir`` on ``host:port`` until interrupted (Ctrl-C, SIGTERM); returns None.

    ``weights`` (fp32, bf16, int8) and ``compile`` (auto, True, False) are those of :func:`gptlab.inference.prepare`.

    On shutdown, requests in flight get ``grace_s`` seconds to finish; then they end with their final chunks.
    Up to ``max_batch`` requests are generated together (newcomers join at the next token); more wait in order.

    Loopback by default: pass ``host="0.0.0.0"`` only on a trusted network (there is no auth).
    Host names: loopback ones, plus ``allowed_hosts`` when given, else any when ``host`` is
    not loopback; browser origins: only ``allowed_origins`` (and the server's own).
    ``threads`` sets torch's intra-op threads for this process; 1 is much faster for small
    models on a busy machine (a 4-token reply of a tiny model: 9 ms with 1, 230 ms with 2
    threads on 2 cores shared with other jobs).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    hosts = default_allowed_hosts(host, allowed_hosts)
    app = build_app(
        model_dir,
        adapter_dir,
        model_name,
        max_body_bytes,
        max_tokens_limit,
        allowed_hosts=hosts,
        allowed_origins=allowed_origins or (),
        max_batch=max_batch,
        weights=weights,
        compile=compile,
    )
    sock = _bind(host, port)
    try:
        DrainingServer(uvicorn.Config(app, log_level="info"), app.state.engine, grace_s).run(sockets=[sock])
    finally:
        sock.close()
