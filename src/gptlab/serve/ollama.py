"""Ollama's API: ``/api/generate``, ``/api/chat``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``.

Streaming is Ollama's default: NDJSON lines with ``done`` false, then one line with ``done``
true and the counts. Sampling ``options``: ``temperature`` (default 0.8, 0 = greedy),
``top_k`` (40; 0 = off), ``top_p`` (0.9), ``min_p`` (0 = off), ``repeat_penalty`` (1 = off;
Ollama's own default is 1.1), ``presence_penalty`` and ``frequency_penalty`` (0), all three
penalties over the last ``repeat_last_n`` tokens of prompt and answer (64; 0 = none, -1 = the
context), as llama.cpp; ``seed``, ``num_predict`` (128; -1/-2 = up to the
server's limit; always capped so prompt + answer fit the context), ``stop``. Load-time options
(``num_ctx``, ``num_thread``...) and options that only tune a refused sampler (``mirostat_tau``...)
are ignored; samplers gptlab lacks (``mirostat``, ``typical_p``, ``tfs_z``), unknown options, and ``format``, ``tools``, ``images``, ``think``... are
refused with a 400 naming them, unless sent with their "off" value. A prompt that does not
fit the context is a 400 naming both lengths unless the request sends ``"truncate": true``
(then its last tokens are kept, leaving room for the answer).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ConfigDict, Field

from gptlab import __version__
from gptlab.data.prompts import format_prompt
from gptlab.serve.common import RequestModel, Served, StopMixin, check_model, json_body, now_iso, refuse_unless, served
from gptlab.serve.engine import Completion, sampling_config
from gptlab.serve.errors import ApiError
from gptlab.serve.prompts import ChatMessage

router = APIRouter()
NEVER = "9999-12-31T23:59:59Z"  # /api/ps expires_at: the model stays loaded while the server runs
_OFF_SAMPLERS = {"mirostat": (0,), "typical_p": (1,), "tfs_z": (1,)}
DEFAULT_REPEAT_LAST_N = 64  # Ollama's
_OFF_FEATURES = {"format": ("",), "tools": ([],), "images": ([],), "think": (False,), "logprobs": (False,), "top_logprobs": (0,)}


class OllamaOptions(StopMixin):
    """Ollama ``options``: the sampling gptlab implements; other samplers must be off; load-time options
    (and those tuning only a refused sampler) are ignored; an unknown option is a 400."""

    model_config = ConfigDict(strict=True, extra="forbid")

    num_predict: int | None = Field(None, ge=-2)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_last_n: int | None = Field(None, ge=-1)
    mirostat: int | None = None
    typical_p: float | None = None
    tfs_z: float | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    # ignored: load-time options, and options that change nothing while the samplers above are off
    numa: Any = None
    num_ctx: Any = None
    num_batch: Any = None
    num_gpu: Any = None
    main_gpu: Any = None
    low_vram: Any = None
    f16_kv: Any = None
    logits_all: Any = None
    vocab_only: Any = None
    use_mmap: Any = None
    use_mlock: Any = None
    embedding_only: Any = None
    num_thread: Any = None
    num_keep: Any = None
    mirostat_tau: Any = None
    mirostat_eta: Any = None
    penalize_newline: Any = None


class OllamaMessage(ChatMessage):
    """An Ollama chat message; ``images`` and ``tool_calls`` must be empty."""

    images: list[Any] | None = None
    tool_calls: list[Any] | None = None


class _OllamaRequest(RequestModel):
    stream: bool | None = None
    options: OllamaOptions | None = None
    format: Any = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    keep_alive: Any = None  # accepted, meaningless here: the model stays loaded
    truncate: bool | None = None  # a prompt over the context keeps its last tokens instead of a 400

    def check(self) -> None:
        """Raise ApiError 400 for features and samplers gptlab serve lacks."""
        refuse_unless(self, {k: v for k, v in _OFF_FEATURES.items() if k in type(self).model_fields})
        if self.options is not None:
            refuse_unless(self.options, _OFF_SAMPLERS, prefix="options.")


class GenerateRequest(_OllamaRequest):
    """``POST /api/generate``: ``prompt`` (with ``system``; ``raw`` continues the text as given)."""

    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    images: list[Any] | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None

    def check(self) -> None:
        """Raise ApiError 400 for unsupported features (``suffix``, ``template``, ``context``...)."""
        super().check()
        refuse_unless(self, {"suffix": ("",), "template": ("",), "context": ([],)})


class ChatRequest(_OllamaRequest):
    """``POST /api/chat``: ``messages`` (none or empty: Ollama's "load the model" call)."""

    messages: list[OllamaMessage] | None = None
    tools: list[Any] | None = None

    def check(self) -> None:
        """Raise ApiError 400 for unsupported features, messages with images or tool calls included."""
        super().check()
        for i, m in enumerate(self.messages or []):
            refuse_unless(m, {"images": ([],), "tool_calls": ([],)}, prefix=f"messages[{i}].")


class ShowRequest(RequestModel):
    """``POST /api/show``: ``model`` (older clients: ``name``)."""

    name: str | None = None
    verbose: bool | None = None


def _details(s: Served) -> dict:
    dtype = next(s.engine.model.parameters()).dtype
    level = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}.get(str(dtype), str(dtype))
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": s.family,
        "families": [s.family],
        "parameter_size": f"{s.n_params / 1e6:.1f}M",
        "quantization_level": level,
    }


def _size(s: Served) -> int:
    return sum(p.numel() * p.element_size() for p in s.engine.model.parameters())


def _final(s: Served, c: Completion) -> dict:
    return {
        "model": s.name,
        "created_at": now_iso(),
        "done": True,
        "done_reason": _final_reason(c),
        "total_duration": int(c.seconds * 1e9),
        "load_duration": 0,
        "prompt_eval_count": c.prompt_tokens,
        "eval_count": c.completion_tokens,
        "eval_duration": int(c.seconds * 1e9),
    }


def _last_n(repeat_last_n: int | None, context: int) -> int:
    """Return the penalties' window of Ollama's ``repeat_last_n`` (None: 64; -1: the context), in tokens."""
    if repeat_last_n is None:
        return DEFAULT_REPEAT_LAST_N
    return context if repeat_last_n < 0 else repeat_last_n


def _final_reason(c: Completion) -> str:
    return c.finish_reason if c.finish_reason in ("length", "shutdown") else "stop"


async def _reply(s: Served, prompt: str | list[ChatMessage], body: _OllamaRequest, chat: bool, gone) -> Response:
    o = body.options or OllamaOptions()
    cfg = sampling_config(
        128 if o.num_predict is None else o.num_predict,
        s.engine.max_tokens_limit,
        0.8 if o.temperature is None else o.temperature,
        40 if o.top_k is None else o.top_k,
        0.9 if o.top_p is None else o.top_p,
        o.seed,
        min_p=o.min_p,
        repetition_penalty=o.repeat_penalty,
        frequency_penalty=o.frequency_penalty,
        presence_penalty=o.presence_penalty,
        penalty_last_n=_last_n(o.repeat_last_n, s.context_length),
    )
    stop = o.stop or []
    job = await s.engine.prepare(prompt, cfg, keep=0 if body.truncate else None, field="messages" if chat else "prompt")
    cfg, prompt_ids = job.cfg, job.ids

    def piece(text: str) -> dict:
        return {"message": {"role": "assistant", "content": text}} if chat else {"response": text}

    if body.stream is False:
        c = await s.engine.complete_async(prompt_ids, cfg, stop, gone=gone)
        return JSONResponse({**_final(s, c), **piece(c.text)})

    async def lines() -> AsyncIterator[str]:
        try:
            async for item in s.engine.pieces(prompt_ids, cfg, stop):
                if isinstance(item, Completion):
                    yield json.dumps({**_final(s, item), **piece("")}) + "\n"
                else:
                    yield json.dumps({"model": s.name, "created_at": now_iso(), **piece(item), "done": False}) + "\n"
        except Exception as e:  # headers are gone: report in-band, as Ollama does
            yield json.dumps({"error": f"generation failed: {e}"}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _loaded(s: Served, chat: bool) -> JSONResponse:
    """Ollama's answer to a request without a prompt: the model is loaded (it always is)."""
    reply = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    return JSONResponse({"model": s.name, "created_at": now_iso(), **reply, "done": True, "done_reason": "load"})


@router.get("/api/version")
async def version() -> dict:
    """Return ``{"version": ...}`` (gptlab's version)."""
    return {"version": __version__}


@router.get("/api/tags")
async def tags(s: Served = Depends(served)) -> dict:
    """Return the one served model in Ollama's listing shape."""
    entry = {"name": s.name, "model": s.name, "modified_at": now_iso(), "size": _size(s), "digest": "", "details": _details(s)}
    return {"models": [entry]}


@router.get("/api/ps")
async def ps(s: Served = Depends(served)) -> dict:
    """Return the loaded models (the served one, on the CPU) in Ollama's shape."""
    entry = {
        "name": s.name,
        "model": s.name,
        "size": _size(s),
        "digest": "",
        "details": _details(s),
        "expires_at": NEVER,
        "size_vram": 0,
        "context_length": s.context_length,
    }
    return {"models": [entry]}


@router.post("/api/show")
async def show(body: ShowRequest = Depends(json_body(ShowRequest)), s: Served = Depends(served)) -> dict:
    """Return the model's details, parameters, prompt template and architecture facts in Ollama's shape."""
    name = body.model or body.name
    if not name:
        raise ApiError(400, "model is required; send the name from /api/tags")
    check_model(s, name, openai=False)
    cfg = s.engine.model.config
    style = s.engine.prompt_style
    template = (s.engine.tokenizer.chat_template if style in (None, "chat") else None) or format_prompt("{{ .Prompt }}", style=style or "alpaca")
    parameters = f"temperature 0.8\ntop_k 40\ntop_p 0.9\nnum_predict 128\nrepeat_penalty 1\nrepeat_last_n {DEFAULT_REPEAT_LAST_N}"
    arch = s.family
    info = {
        "general.architecture": arch,
        "general.parameter_count": s.n_params,
        f"{arch}.context_length": s.context_length,
        f"{arch}.embedding_length": cfg.emb_dim,
        f"{arch}.block_count": cfg.n_layers,
        f"{arch}.attention.head_count": cfg.n_heads,
        f"{arch}.vocab_size": cfg.vocab_size,
    }
    return {
        "modelfile": f"# served by gptlab {__version__}\nFROM {s.name}\n" + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
        "parameters": parameters,
        "template": template,
        "details": _details(s),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": now_iso(),
    }


@router.post("/api/generate")
async def generate(request: Request, body: GenerateRequest = Depends(json_body(GenerateRequest)), s: Served = Depends(served)) -> Response:
    """Continue ``prompt`` (as given with ``raw``, else as the instruction of a chat turn)."""
    check_model(s, body.model, openai=False)
    prompt, system = body.prompt or "", body.system or ""
    if not prompt and not system:  # Ollama's "load the model" call
        return _loaded(s, chat=False)
    text: str | list[ChatMessage] = prompt
    if not body.raw:  # rendered off the event loop, bounded, by the engine
        text = ([ChatMessage(role="system", content=system)] if system else []) + [ChatMessage(role="user", content=prompt)]
    return await _reply(s, text, body, chat=False, gone=request.is_disconnected)


@router.post("/api/chat")
async def chat(request: Request, body: ChatRequest = Depends(json_body(ChatRequest)), s: Served = Depends(served)) -> Response:
    """Answer the last user message of ``messages``."""
    check_model(s, body.model, openai=False)
    if not body.messages:
        return _loaded(s, chat=True)
    return await _reply(s, list(body.messages), body, chat=True, gone=request.is_disconnected)
