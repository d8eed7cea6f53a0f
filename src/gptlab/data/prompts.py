"""Instruction prompt styles: the text a record becomes for training and for generation.

``chat`` renders the record as one user turn with the model's own chat template (the Jinja
string its tokenizer carries, e.g. SmolLM2's ChatML), ``add_generation_prompt=True``; the
response is the output, closed by the tokenizer's end-of-turn token. The other two styles,
both from the Alpaca template, differ in two places:

``alpaca`` (the default; Stanford Alpaca's own template)
    Records with a non-blank ``input`` get the longer header "Below is an instruction that
    describes a task, paired with an input that provides further context. Write a response
    that appropriately completes the request."; the others get the short one. The prompt
    ends with ``\\n\\n### Response:\\n``, so generation starts with the answer itself.

``book`` (exactly ``format_input`` of "Build a Large Language Model (From Scratch)", ch. 7)
    One header for every record, the short one: "Below is an instruction that describes a
    task. Write a response that appropriately completes the request." The ``### Input:``
    section appears when ``input`` is non-empty (a whitespace-only input counts, as in the
    book). The prompt stops *before* ``\\n\\n### Response:``: training appends
    ``"\\n\\n### Response:\\n" + output`` (so the marker is part of the response, learned and
    not masked by ``mask_prompt``), and generation feeds the prompt alone, so the model writes
    the marker itself; :func:`response_text` removes it as the book does.

A fine-tuned model records its style in its folder's ``config.json`` (key ``prompt_style``);
:func:`model_prompt_style` reads it back, so generate, score and serve prompt it as it was trained.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gptlab.errors import GptlabError
from gptlab.io import read_json

ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
RESPONSE_MARK = "### Response:"
PROMPT_STYLES = ("alpaca", "book", "chat")
PROMPT_STYLE_KEY = "prompt_style"  # the key of a model folder's config.json that records the style


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise GptlabError(f"prompt style {style!r} is unknown; choose one of {', '.join(PROMPT_STYLES)}")


def model_prompt_style(folder: str | Path, default: str | None = None) -> str | None:
    """Return the prompt style recorded in ``folder/config.json`` (key ``prompt_style``, written
    when fine-tuning), or ``default`` when the folder records none (a base model, a Hugging Face
    or OpenAI folder). GptlabError naming the file when the recorded style is unknown."""
    path = Path(str(folder).removeprefix("hf:")) / "config.json"
    data = read_json(path, "a model folder's config.json") if path.is_file() else {}
    style = data.get(PROMPT_STYLE_KEY) if isinstance(data, dict) else None
    if style is None:
        return default
    if style not in PROMPT_STYLES:
        raise GptlabError(f"{path}: {PROMPT_STYLE_KEY} {style!r} is unknown; choose one of {', '.join(PROMPT_STYLES)} (or fine-tune the model again)")
    return style


@functools.lru_cache(maxsize=8)
def compile_chat_template(template: str, environment: type[ImmutableSandboxedEnvironment] = ImmutableSandboxedEnvironment):
    """Return the compiled Jinja ``template`` (sandboxed, as transformers renders chat templates),
    compiled in ``environment`` (a subclass of Jinja's immutable sandbox, e.g. serve's bounded one).

    Raises GptlabError when it does not compile; the template may call ``raise_exception`` and
    ``strftime_now`` as Hugging Face templates do.
    """

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise GptlabError(f"the tokenizer's chat_template does not compile ({e}); fix it in the checkpoint's tokenizer files") from None


def render_chat(template: str, messages: Sequence[Mapping], add_generation_prompt: bool = True, **extra) -> str:
    """Return ``messages`` (``{role, content}`` dicts) rendered with the Jinja chat ``template``."""
    return compile_chat_template(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt, **extra)


def format_prompt(instruction: str, input: str = "", style: str = "alpaca", template: str | None = None) -> str:
    """Return the prompt text generation is given for one instruction.

    ``alpaca``: header (the longer one with a non-blank input), ``### Instruction:``, optional
    ``### Input:``, then ``### Response:\n``: it ends just where the response begins.
    ``book``: the book's ``format_input``: short header, ``### Instruction:``, optional
    ``### Input:``; it ends before ``\n\n### Response:`` (see the module docstring).
    ``chat``: one user turn (the instruction, then the input after a blank line) rendered with
    ``template``, the model's chat template, ending where the assistant's answer begins.
    """
    _check_style(style)
    if style == "chat":
        if not template:
            raise GptlabError(
                "prompt_style chat needs a model whose tokenizer has a chat template (e.g. convert.source: smollm2-135m-instruct); use alpaca or book"
            )
        content = f"{instruction}\n\n{input}" if input and input.strip() else instruction
        return render_chat(template, [{"role": "user", "content": content}])
    if style == "book":
        text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
        return text + (f"\n\n### Input:\n{input}" if input else "")
    if input and input.strip():
        return f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n{RESPONSE_MARK}\n"
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n{RESPONSE_MARK}\n"


def encode_prompt(tokenizer, text: str, style: str) -> list[int]:
    """Return the token ids of a prompt ``text`` of ``style``: a chat prompt's special tokens
    (``<|im_start|>``...) come from the template and are encoded as such; other styles encode
    plain text (an ``<|endoftext|>`` typed in a record stays text)."""
    return tokenizer.encode(text, allowed_special="all") if style == "chat" else tokenizer.encode_ordinary(text)


def format_example(record: Mapping, style: str = "alpaca", template: str | None = None) -> tuple[str, str]:
    """Return ``(prompt, response)`` texts of a record for training; ``prompt + response`` is
    the training text (no end-of-text marker).

    ``prompt`` is :func:`format_prompt`; ``response`` is the record's ``output`` for
    ``alpaca`` and ``"\\n\\n### Response:\\n" + output`` for ``book`` (the book's training text).
    """
    prompt = format_prompt(record["instruction"], record.get("input") or "", style, template)
    return prompt, (f"\n\n{RESPONSE_MARK}\n" if style == "book" else "") + record["output"]


def response_text(generated: str, style: str = "alpaca") -> str:
    """Return the answer in ``generated``, the text a model wrote after :func:`format_prompt`.

    ``book``: the book's ``generated.replace("### Response:", "").strip()`` (the model writes
    the marker itself); ``alpaca``: ``generated.strip()``.
    """
    _check_style(style)
    return (generated.replace(RESPONSE_MARK, "") if style == "book" else generated).strip()
