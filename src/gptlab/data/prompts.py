"""Instruction prompt styles: the text a record becomes for training and for generation.

Two styles, both from the Alpaca template, differ in two places:

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
"""

from __future__ import annotations

from collections.abc import Mapping

from gptlab.errors import GptlabError

ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
RESPONSE_MARK = "### Response:"
PROMPT_STYLES = ("alpaca", "book")


class PromptStyleError(GptlabError, ValueError):
    """An unknown prompt style; the message lists the known ones."""


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise PromptStyleError(f"prompt style {style!r} is unknown; choose one of {', '.join(PROMPT_STYLES)}")


def format_prompt(instruction: str, input: str = "", style: str = "alpaca") -> str:
    """Return the prompt text generation is given for one instruction.

    ``alpaca``: header (the longer one with a non-blank input), ``### Instruction:``, optional
    ``### Input:``, then ``### Response:\\n``: it ends just where the response begins.
    ``book``: the book's ``format_input``: short header, ``### Instruction:``, optional
    ``### Input:``; it ends before ``\\n\\n### Response:`` (see the module docstring).
    """
    _check_style(style)
    if style == "book":
        text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
        return text + (f"\n\n### Input:\n{input}" if input else "")
    if input and input.strip():
        return f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n{RESPONSE_MARK}\n"
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n{RESPONSE_MARK}\n"


def format_example(record: Mapping, style: str = "alpaca") -> tuple[str, str]:
    """Return ``(prompt, response)`` texts of a record for training; ``prompt + response`` is
    the training text (no end-of-text marker).

    ``prompt`` is :func:`format_prompt`; ``response`` is the record's ``output`` for
    ``alpaca`` and ``"\\n\\n### Response:\\n" + output`` for ``book`` (the book's training text).
    """
    prompt = format_prompt(record["instruction"], record.get("input") or "", style)
    return prompt, (f"\n\n{RESPONSE_MARK}\n" if style == "book" else "") + record["output"]


def response_text(generated: str, style: str = "alpaca") -> str:
    """Return the answer in ``generated``, the text a model wrote after :func:`format_prompt`.

    ``book``: the book's ``generated.replace("### Response:", "").strip()`` (the model writes
    the marker itself); ``alpaca``: ``generated.strip()``.
    """
    _check_style(style)
    return (generated.replace(RESPONSE_MARK, "") if style == "book" else generated).strip()
