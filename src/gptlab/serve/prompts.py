"""Chat messages and the prompt builders that turn them into one prompt for the model.

A builder is chosen by :func:`prompt_builder` from the prompt style the model was fine-tuned
with (recorded in its folder): ``chat`` renders the messages with the tokenizer's chat template
(a Jinja string, as Hugging Face tokenizers carry; ``add_generation_prompt=True``); ``alpaca``
and ``book`` are instruction prompts. With no recorded style a tokenizer's chat template wins,
else alpaca. In an instruction prompt the last user message is the instruction; the messages before it (system, earlier user and
assistant turns, in order) are folded into the ``### Input:`` block as ``System: ...``,
``User: ...``, ``Assistant: ...`` paragraphs, and messages after it (an assistant prefill) are
appended after ``### Response:`` for the model to continue.

A chat template is a model folder's code: it renders in a sandbox with bounds
(``TEMPLATE_TIMEOUT_S`` seconds of running, checked at every line of the compiled template;
``TEMPLATE_MAX_CHARS`` characters of output; ``*`` and ``**`` that would build a longer
string or a huge number refused before they run), so a template with nested loops stops
and the request gets a 422 naming the bound (see :func:`render_bounded`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator

from gptlab.data.prompts import compile_chat_template, format_prompt
from gptlab.errors import GptlabError
from gptlab.serve.errors import ApiError, from_validation
from gptlab.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """Text for the model; ``special_tokens``: special-token text in it (from a chat template) is encoded as those tokens."""

    text: str
    special_tokens: bool = False


class ChatMessage(BaseModel):
    """One chat message: a ``role`` and text ``content`` (a string, or OpenAI's list of ``{type: text, text}`` parts)."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:  # pydantic's validators raise ValueError; serve.errors turns it into a 400
                raise ValueError("only text content parts are supported; send images or audio to a multimodal server")
        return "".join(parts)


PromptBuilder = Callable[[Sequence[ChatMessage]], Prompt]
_MESSAGES = TypeAdapter(list[ChatMessage])
TEMPLATE_TIMEOUT_S = 5.0  # a chat template's running time per request (real templates take milliseconds)
TEMPLATE_MAX_CHARS = 4 << 20  # ... and its output: 4 Mi characters, past any context once tokenized
_MAX_EXPONENT = 4096


class TemplateBoundError(Exception):
    """A chat template ran past one of its bounds (time, output size, a huge ``*`` or ``**``)."""


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (as transformers renders chat templates) refusing a ``*`` that
    would build a sequence over ``TEMPLATE_MAX_CHARS`` and a ``**`` with a huge exponent (both
    run in C, where the time bound cannot stop them)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Return ``left operator right`` unless it would exceed the bounds (TemplateBoundError)."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > TEMPLATE_MAX_CHARS:
                    raise TemplateBoundError(f"the chat template exceeded {TEMPLATE_MAX_CHARS} characters")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT and isinstance(left, (int, float)) and abs(left) > 1:
            raise TemplateBoundError(f"the chat template raised a number to the power {right}")
        return super().call_binop(context, operator, left, right)


def compile_bounded(chat_template: str) -> Template:
    """Return the Jinja ``chat_template`` compiled in a :class:`BoundedEnvironment` (the one
    compiler, :func:`gptlab.data.prompts.compile_chat_template`); GptlabError when it does not compile."""
    try:
        return compile_chat_template(chat_template, BoundedEnvironment)
    except GptlabError as e:
        raise GptlabError(f"serve: {e}") from None


def render_bounded(template: Template, timeout_s: float | None = None, max_chars: int | None = None, **context: Any) -> str:
    """Return ``template`` rendered with ``context``, stopped by TemplateBoundError past ``timeout_s``
    seconds (default ``TEMPLATE_TIMEOUT_S``) or ``max_chars`` characters of output (``TEMPLATE_MAX_CHARS``).

    The time bound is real: a trace function on this thread checks the clock at every line the
    compiled template runs and raises inside it, so the thread stops (Python threads cannot be killed).
    """
    timeout_s = TEMPLATE_TIMEOUT_S if timeout_s is None else timeout_s
    max_chars = TEMPLATE_MAX_CHARS if max_chars is None else max_chars
    deadline = time.monotonic() + timeout_s

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TemplateBoundError(f"the chat template exceeded {timeout_s:g} s")
        return tracer

    pieces, size, previous = [], 0, sys.gettrace()
    sys.settrace(tracer)
    try:
        for piece in template.generate(**context):
            size += len(piece)
            if size > max_chars:
                raise TemplateBoundError(f"the chat template exceeded {max_chars} characters")
            pieces.append(piece)
    finally:
        sys.settrace(previous)
    return "".join(pieces)


def alpaca_builder(style: str = "alpaca") -> PromptBuilder:
    """Return the builder of instruction prompts in ``style`` (GptlabError if the style is unknown)."""
    try:
        format_prompt("check", style=style)
    except GptlabError as e:
        raise GptlabError(f"serve: {e}") from None

    def build(messages: Sequence[ChatMessage]) -> Prompt:
        turns = [(m.role, m.content or "") for m in messages]
        users = [i for i, (role, _) in enumerate(turns) if role == "user"]
        if not users:
            raise ApiError(400, "messages contain no user message to answer; add one with role 'user'", param="messages")
        last = users[-1]
        context = "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns[:last] if text.strip())
        prefill = "".join(text for _, text in turns[last + 1 :])
        return Prompt(format_prompt(turns[last][1], context, style=style) + prefill)

    return build


def template_builder(chat_template: str, bos_token: str = "", eos_token: str = "") -> PromptBuilder:
    """Return the builder rendering messages with the Jinja ``chat_template`` (sandboxed, as transformers does,
    and bounded: :func:`render_bounded`).

    GptlabError if the template does not compile; a template's ``raise_exception`` is a 400 for the
    client; a template past its time or size bound a 422 naming the bound (the model's template,
    not the request, is at fault, but this request cannot be answered).
    """
    template = compile_bounded(chat_template)

    def build(messages: Sequence[ChatMessage]) -> Prompt:
        turns = [{"role": m.role, "content": m.content or ""} for m in messages]
        try:
            text = render_bounded(template, messages=turns, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        except TemplateError as e:
            raise ApiError(400, f"messages do not fit the model's chat template: {e}", param="messages") from None
        except (TemplateBoundError, MemoryError, OverflowError) as e:
            raise ApiError(
                422, f"{e} rendering these messages; the model folder's chat_template is at fault", param="messages", code="chat_template_bound"
            ) from None
        return Prompt(text, special_tokens=True)

    return build


def prompt_builder(tokenizer: Tokenizer, style: str | None = None) -> PromptBuilder:
    """Return the builder of the model's prompt ``style`` (as fine-tuned; see
    :func:`gptlab.data.prompts.model_prompt_style`): ``chat`` renders the tokenizer's chat
    template, ``alpaca``/``book`` are :func:`alpaca_builder`. ``None`` (no recorded style): the
    chat template when the tokenizer has one, else alpaca. GptlabError for ``chat`` without a template."""
    template = tokenizer.chat_template if tokenizer.chat_template and tokenizer.chat_template.strip() else None
    if style == "chat" and template is None:
        raise GptlabError("serve: prompt_style chat needs a tokenizer with a chat template; this model's has none (serve it with alpaca or book)")
    if template is not None and style in (None, "chat"):
        return template_builder(template, tokenizer.bos_token, tokenizer.eos_token)
    return alpaca_builder(style or "alpaca")


def parse_messages(messages: object) -> list[ChatMessage]:
    """Return ``messages`` (a JSON-like list of ``{role, content}``) as ChatMessages; ApiError 400 if malformed or empty."""
    try:
        parsed = _MESSAGES.validate_python(messages)
    except ValidationError as e:
        raise from_validation(e, prefix="messages") from None
    if not parsed:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    return parsed


def chat_prompt(messages: object, style: str = "alpaca") -> str:
    """Return the alpaca prompt text for raw chat ``messages`` (see the module docstring for the folding)."""
    return alpaca_builder(style)(parse_messages(messages)).text
