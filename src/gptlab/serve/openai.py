"""OpenAI's API: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``.

Streaming (``stream: true``) sends server-sent events ``data: {...}`` ending with
``data: [DONE]``. Sampling: ``temperature`` (0..2, default 1), ``top_p`` (0..1), ``top_k``
(vLLM's extension; -1/0 = off), ``min_p`` (0..1), ``repetition_penalty`` (> 0, over prompt and
answer, as Hugging Face and vLLM), ``frequency_penalty`` and ``presence_penalty`` (-2..2, over the
answer, as OpenAI), ``seed``, ``max_tokens`` / ``max_completion_tokens`` (default
16 for completions, the server's limit for chat; capped at it and at the room the context
leaves), ``stop``. Parameters gptlab does not implement (``logprobs``, ``response_format``,
``tools``, ``n`` > 1, ``logit_bias``...) are refused with a 400
naming them, unless sent with their "off" value; so is any key this module does not know. Keys
that cannot change the answer (``user``, ``metadata``, ``store``, ``service_tier``,
``prompt_cache_key``, ``safety_identifier``) are ignored. A prompt that does not fit the
context is a 400 naming both lengths unless ``truncate_prompt_tokens`` (vLLM's: keep the
prompt's last N tokens) is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gptlab.serve.common import RequestModel, Served, StopMixin, check_model, json_body, refuse_unless, served
from gptlab.serve.engine import Completion, sampling_config
from gptlab.serve.errors import ApiError
from gptlab.serve.prompts import ChatMessage

router = APIRouter()
_OFF = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "parallel_tool_calls": (True, False),
}


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool | None = None


class _OpenAIRequest(RequestModel, StopMixin):
    model_config = ConfigDict(strict=True, extra="forbid")  # an unknown key is a 400: it might change the answer

    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    # ignored: they cannot change the answer
    user: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None

    def check(self) -> None:
        """Raise ApiError 400 for parameters gptlab serve does not implement."""
        if self.n is not None and self.n != 1:
            raise ApiError(400, f"only n=1 is supported, got n={self.n}; send one request per completion", param="n")
        refuse_unless(self, _OFF)


class OpenAIMessage(ChatMessage):
    """A chat message; ``tool_calls`` must be empty."""

    tool_calls: list[Any] | None = None


class ChatCompletionRequest(_OpenAIRequest):
    """``POST /v1/chat/completions``."""

    messages: list[OpenAIMessage]

    def check(self) -> None:
        """Raise ApiError 400 for unsupported parameters, no messages, or messages with tool calls."""
        super().check()
        if not self.messages:
            raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
        for i, m in enumerate(self.messages):
            refuse_unless(m, {"tool_calls": ([],)}, prefix=f"messages[{i}].")


class CompletionRequest(_OpenAIRequest):
    """``POST /v1/completions``: one ``prompt`` continued as given."""

    prompt: Any = ""
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check(self) -> None:
        """Raise ApiError 400 for unsupported parameters or a prompt that is not one string."""
        super().check()
        refuse_unless(self, {"echo": (False,), "best_of": (1,), "suffix": ("",)})
        if not isinstance(self.text, str):
            raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")

    @property
    def text(self) -> Any:
        """Return the prompt string (a one-string list is unwrapped)."""
        p = self.prompt
        return p[0] if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str) else p


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens}


def _finish(c: Completion) -> str:
    return c.finish_reason if c.finish_reason in ("length", "shutdown") else "stop"


async def _reply(s: Served, prompt: str | list[ChatMessage], body: _OpenAIRequest, chat: bool, default_max_tokens: int, gone) -> Response:
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    cfg = sampling_config(
        default_max_tokens if max_tokens is None else max_tokens,
        s.engine.max_tokens_limit,
        1.0 if body.temperature is None else body.temperature,
        body.top_k,
        body.top_p,
        body.seed,
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
    )
    stop = body.stop or []
    job = await s.engine.prepare(prompt, cfg, keep=body.truncate_prompt_tokens, field="messages" if chat else "prompt")
    cfg, prompt_ids = job.cfg, job.ids
    kind = "chat.completion" if chat else "text_completion"
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    stamp = int(time.time())

    if not body.stream:
        c = await s.engine.complete_async(prompt_ids, cfg, stop, gone=gone)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": None, "finish_reason": _finish(c)}
        else:
            choice = {"index": 0, "text": c.text, "logprobs": None, "finish_reason": _finish(c)}
        return JSONResponse({"id": ident, "object": kind, "created": stamp, "model": s.name, "choices": [choice], "usage": _usage(c)})

    include_usage = body.stream_options is not None and body.stream_options.include_usage is True

    def envelope(choices: list, **extra) -> str:
        data = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": stamp, "model": s.name, "choices": choices, **extra}
        return f"data: {json.dumps(data)}\n\n"

    def chunk(delta: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            d: dict = {"role": "assistant", "content": ""} if first else ({} if delta is None else {"content": delta})
            return envelope([{"index": 0, "delta": d, "logprobs": None, "finish_reason": reason}])
        return envelope([{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": reason}])

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                yield chunk(None, None, first=True)
            async for item in s.engine.pieces(prompt_ids, cfg, stop):
                if isinstance(item, Completion):
                    yield chunk(None, _finish(item))
                    if include_usage:
                        yield envelope([], usage=_usage(item))
                else:
                    yield chunk(item, None)
        except Exception as e:  # headers are gone: report in-band
            yield f"data: {json.dumps({'error': {'message': f'generation failed: {e}', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _model_entry(s: Served) -> dict:
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "gptlab"}


@router.get("/v1/models")
async def models(s: Served = Depends(served)) -> dict:
    """Return the one served model in OpenAI's list shape."""
    return {"object": "list", "data": [_model_entry(s)]}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, s: Served = Depends(served)) -> dict:
    """Return the served model, or 404 for any other id."""
    check_model(s, model_id, openai=True)
    return _model_entry(s)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest = Depends(json_body(CompletionRequest)), s: Served = Depends(served)) -> Response:
    """Continue ``prompt`` as given (16 tokens unless ``max_tokens`` says otherwise)."""
    check_model(s, body.model, openai=True)
    return await _reply(s, body.text, body, chat=False, default_max_tokens=16, gone=request.is_disconnected)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest = Depends(json_body(ChatCompletionRequest)), s: Served = Depends(served)) -> Response:
    """Answer ``messages`` (up to the server's token limit unless ``max_tokens`` says otherwise)."""
    check_model(s, body.model, openai=True)
    return await _reply(s, list(body.messages), body, chat=True, default_max_tokens=s.engine.max_tokens_limit, gone=request.is_disconnected)
