"""Request bodies of ``gptlab serve``, read in one place for every route: size, nesting, values.

A body is refused before any route sees it when it is over the size limit (413, from the
``Content-Length`` header alone when it declares too much), nested deeper than
``MAX_JSON_DEPTH`` (400), not a JSON object (400), or holds a string with a lone surrogate
(``"\\ud800"``: not text any tokenizer can encode) or a non-finite number (``NaN``,
``Infinity``, ``1e999``) anywhere: a 400 naming the field (``messages[0].content``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re

from starlette.requests import ClientDisconnect, Request

from gptlab.serve.errors import ApiError

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt fits in the context
MAX_JSON_DEPTH = 64  # the deepest body any route needs is 5 levels (messages[i].content[j].text)
DRAIN_S = 1.0  # an oversized body is read (and dropped) for at most this long before the 413
_DRAIN_FACTOR = 8  # ... and up to this many limits
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte but brackets: deleted by translate

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: one line next to its access lines


def json_depth(body: bytes) -> int:
    """Return how deep the arrays and objects of the JSON text ``body`` nest (0: a scalar), without parsing it."""
    depth = deepest = 0
    for c in _STRINGS.sub(b"", body).translate(None, _BRACKETS):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _where(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "request body"


def check_values(data: object) -> None:
    """Raise ApiError 400 naming the first field of parsed JSON ``data`` that holds a lone surrogate or a non-finite number."""
    todo: list[tuple[tuple, object]] = [((), data)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                bad = value[e.start].encode("unicode_escape").decode()
                raise ApiError(
                    400, f"{_where(path)} holds a lone surrogate ({bad}) at character {e.start}; send valid UTF-16 pairs or plain UTF-8", param=_param(path)
                ) from None
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"{_where(path)} must be a finite number, got {value}", param=_param(path))
        elif isinstance(value, dict):
            for key, item in value.items():
                todo.append((path + (key,), key))  # a key is text too
                todo.append((path + (key,), item))
        elif isinstance(value, list):
            todo.extend((path + (i,), item) for i, item in enumerate(value))


def _param(path: tuple) -> str | None:
    return str(path[0]) if path else None


async def _drain(request: Request, budget: int) -> None:
    """Read and drop up to ``budget`` bytes of the body for at most ``DRAIN_S`` (so the client reads the answer, not a reset)."""

    async def drop() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > budget:
                return

    with contextlib.suppress(TimeoutError, ClientDisconnect):
        await asyncio.wait_for(drop(), DRAIN_S)


async def read_body(request: Request, limit: int) -> bytes:
    """Return the request body; ApiError 413 past ``limit`` bytes (declared or sent), 400 when the client leaves mid-body.

    A declared ``Content-Length`` over ``limit`` is answered from the header alone: at most
    ``_DRAIN_FACTOR`` limits of what was sent are dropped within ``DRAIN_S`` seconds, so the
    client reads the 413 instead of a reset, and nothing waits for a body that never comes.
    A client that disconnects mid-body is logged in one line (no traceback).
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if int(declared) <= limit * _DRAIN_FACTOR:
            await _drain(request, limit * _DRAIN_FACTOR)
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes; send a shorter prompt")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                await _drain(request, limit * _DRAIN_FACTOR)
                raise ApiError(413, f"request body of more than {limit} bytes exceeds the limit of {limit} bytes; send a shorter prompt")
    except ClientDisconnect:
        log.warning("%s %s: the client disconnected after %d of %s body bytes; request dropped", request.method, request.url.path, len(body), declared or "?")
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    return bytes(body)


async def read_json(request: Request, limit: int) -> dict:
    """Return the request's JSON object; ApiError 413 past ``limit`` bytes, 400 if it is not a JSON object
    or is nested deeper than ``MAX_JSON_DEPTH`` or holds a lone surrogate or a non-finite number (naming the field).

    Any content type is read as JSON (``curl -d`` sends form encoding); cross-origin callers
    are refused before this by the guard (:mod:`gptlab.serve.guard`).
    """
    body = await read_body(request, limit)
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ApiError(400, f"request body is nested {depth} levels deep; gptlab serve reads JSON nested at most {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    check_values(data)
    return data
