"""Errors of ``gptlab serve`` and their JSON shape in each API dialect."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from pydantic import ValidationError

_OPENAI_TYPES = {
    400: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}
_KINDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
_BOUNDS = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}", "less_than": "< {lt}"}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message for the client, the offending ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def is_openai(path: str) -> bool:
    """Return True when ``path`` belongs to the OpenAI dialect (``/v1/...``)."""
    return path == "/v1" or path.startswith("/v1/")


def error_content(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """Return the error body in the shape of the API ``path`` belongs to.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Ollama (and the rest): ``{"error": "..."}``.
    """
    if is_openai(path):
        return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": param, "code": code}}
    return {"error": message}


def error_response(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """Return :func:`error_content` as a JSONResponse with ``status``."""
    return JSONResponse(error_content(path, status, message, param, code), status_code=status)


def from_validation(exc: ValidationError, prefix: str = "") -> ApiError:
    """Return a 400 ApiError for the first error of a request model's ``ValidationError``.

    The message names the parameter as the client wrote it (``options.top_k``) and what it
    must be, e.g. ``options.top_k must be >= 0, got -3``; ``param`` is its top-level name.
    ``prefix`` names what was validated when it is not the request body (``messages``).
    """
    err = exc.errors(include_url=False)[0]
    loc = ([prefix] if prefix else []) + [str(p) for p in err["loc"]]
    name = ".".join(p if not p.isdigit() else f"[{p}]" for p in loc).replace(".[", "[") or "request body"
    got = err.get("input")
    try:
        shown = json.dumps(got)
    except (TypeError, ValueError):
        shown = repr(got)
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _KINDS:
        message = f"{name} must be {_KINDS[kind]}, got {shown}"
    elif kind in _BOUNDS:
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        message = f"{name} must be {_BOUNDS[kind].format(**bounds)}, got {shown}"
    elif kind == "extra_forbidden":
        message = f"{name} is not a parameter gptlab serve implements or knows to be harmless; remove it from the request"
    elif kind == "missing":
        message = f"{name} is required"
    elif kind == "value_error":  # raised by our own validators
        reason = str(ctx.get("error", err["msg"]))
        message = f"{name}: {reason}"
    else:
        message = f"{name}: {err['msg']}, got {shown}"
    return ApiError(400, message, param=loc[0] if loc else None)
