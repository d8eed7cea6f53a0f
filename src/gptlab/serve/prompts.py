"""Chat messages and the prompt builders that turn them into one prompt for the model.

A builder is chosen by :func:`prompt_builder` from the prompt style the model was fine-tuned
with (recorded in its folder): ``chat`` renders the messages with the tokenizer's chat template
(a Jinja string, as Hugging Face tokenizers carry; ``add_generation_prompt=True``); ``alpaca``
and ``book`` are instruction prompts. With no recorded style a tokenizer's chat template wins,
else alpaca. In an instruction prompt the last user message is the instruction; the messages before it (system, earlier user and
assistant turns, in order) are folded into the ``### Input:`` block as ``System: ...``,
``User: ...``, ``Assistant: ...`` paragraphs, and messages after it (an assistant prefill) are
appended after ``### Response:`` for the model to continue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
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
    """Return the builder rendering messages with the Jinja ``chat_template`` (sandboxed, as transformers does).

    GptlabError if the template does not compile; a template's ``raise_exception`` is a 400 for the client.
    """

    try:
        template = compile_chat_template(chat_template)
    except GptlabError as e:
        raise GptlabError(f"serve: {e}") from None

    def build(messages: Sequence[ChatMessage]) -> Prompt:
        turns = [{"role": m.role, "content": m.content or ""} for m in messages]
        try:
            text = template.render(messages=turns, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        except TemplateError as e:
            raise ApiError(400, f"messages do not fit the model's chat template: {e}", param="messages") from None
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
