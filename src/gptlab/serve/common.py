"""What the Ollama and OpenAI routers share: the served model's state, typed JSON bodies, model names."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from gptlab.serve.body import DEFAULT_MAX_BODY_BYTES, read_json
from gptlab.serve.engine import Engine
from gptlab.serve.errors import ApiError, from_validation

M = TypeVar("M", bound=BaseModel)


@dataclass
class Served:
    """The model a server answers for: its ``engine``, ``name`` (also ``name:latest``) and facts the listings report."""

    engine: Engine
    name: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> set[str]:
        """Return the names a request may use for this model."""
        return {self.name, f"{self.name}:latest"}

    @property
    def n_params(self) -> int:
        """Return the model's parameter count."""
        return self.engine.model.num_parameters()

    @property
    def context_length(self) -> int:
        """Return the model's context length in tokens."""
        return int(self.engine.model.config.context_length)

    @property
    def family(self) -> str:
        """Return ``llama`` for RMSNorm/RoPE models, else ``gpt2``."""
        return "llama" if getattr(self.engine.model.config, "norm", "layernorm") == "rmsnorm" else "gpt2"


def served(request: Request) -> Served:
    """FastAPI dependency: return the app's :class:`Served`."""
    return request.app.state.served


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with a ``Z``."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class RequestModel(BaseModel):
    """Base of request bodies: strict JSON types (``"5"`` is not a number); unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None

    def check(self) -> None:
        """Raise ApiError 400 for values the types allow but the server does not support (subclasses add rules)."""


class StopMixin(BaseModel):
    """A ``stop`` field: a string or a list of strings (given as a list)."""

    stop: list[str] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def refuse_unless(obj: BaseModel, neutral: dict[str, tuple], prefix: str = "") -> None:
    """Raise a 400 naming the first field of ``obj`` set to a value outside its ``neutral`` ones.

    ``neutral`` maps a field to the values that mean "off" (None always does), e.g.
    ``{"tools": ([],), "presence_penalty": (0,)}``: a request may send them, and nothing changes.
    """
    for name, ok in neutral.items():
        value = getattr(obj, name)
        if value is not None and not any(value == v for v in ok):
            raise ApiError(
                400,
                f"{prefix}{name}={json.dumps(value, default=str)} is not supported by gptlab serve; remove it from the request",
                param=re.split(r"[.\[]", prefix or name)[0],
            )


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Return a FastAPI dependency giving the request body validated as ``model`` (400 naming the bad parameter)."""

    async def parse(request: Request) -> M:
        data = await read_json(request, served(request).max_body_bytes)
        try:
            body = model.model_validate(data)
        except ValidationError as e:
            raise from_validation(e) from None
        if isinstance(body, RequestModel):
            body.check()
        return body

    return parse


def check_model(s: Served, name: str | None, openai: bool) -> None:
    """Raise a 404 ApiError in the dialect's words when ``name`` is given and is not the served model."""
    if not name or name in s.names:
        return
    if openai:
        raise ApiError(404, f"The model `{name}` does not exist; this server has `{s.name}`", param="model", code="model_not_found")
    raise ApiError(404, f'model "{name}" not found; this server has "{s.name}"')
