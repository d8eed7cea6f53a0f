"""Talking to a model: its prompts (chat template or fine-tuning prompt style), a multi-turn
conversation cropped to the context, and answers streamed as they come.

A model's prompt style is the one recorded when it was fine-tuned (``prompt_style`` in its
``config.json``); with none, a tokenizer's chat template makes it ``chat``; with neither it is
a plain language model (``None``: ``gptlab sample`` continues the raw text, ``gptlab chat``
uses alpaca prompts, as ``gptlab serve`` does). ``chat`` renders the whole conversation with the
template; ``alpaca`` and ``book`` give one instruction prompt per turn, the earlier turns in its
``### Input:`` block as ``User: ...`` / ``Assistant: ...`` paragraphs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gptlab.data.prompts import encode_prompt, format_prompt, model_prompt_style, render_chat, response_text
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, stream
from gptlab.tokenizer import Tokenizer


def prompt_style_of(model_dir: str | Path, tokenizer: Tokenizer) -> str | None:
    """Return the prompt style to talk to the model in ``model_dir`` with: the recorded one, else
    ``chat`` when ``tokenizer`` has a chat template, else None (a plain language model)."""
    return model_prompt_style(model_dir) or ("chat" if tokenizer.chat_template else None)


def single_turn_ids(tokenizer: Tokenizer, text: str, style: str | None) -> list[int]:
    """Return the token ids of ``text`` as one user turn in ``style`` (None: the raw text, specials allowed)."""
    if style is None:
        return tokenizer.encode(text, allowed_special="all")
    return encode_prompt(tokenizer, format_prompt(text, "", style, tokenizer.chat_template), style)


class Conversation:
    """The turns of one chat, and the prompt of the next answer within ``context_length - max_new_tokens`` tokens."""

    def __init__(self, tokenizer: Tokenizer, style: str, context_length: int, max_new_tokens: int, system: str | None = None):
        self.tokenizer, self.style, self.system = tokenizer, style, system
        self.budget = max(1, context_length - max_new_tokens)
        self.turns: list[tuple[str, str]] = []  # (user, assistant)

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.turns = []

    def add(self, user: str, answer: str) -> None:
        """Record a finished turn; ``answer`` is the model's text as generated."""
        self.turns.append((user, response_text(answer, self.style)))

    def _ids(self, turns: list[tuple[str, str]], user: str) -> list[int]:
        """The prompt ids of ``user`` after ``turns``."""
        if self.style == "chat":
            messages = [{"role": "system", "content": self.system}] if self.system else []
            for u, a in turns:
                messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            text = render_chat(self.tokenizer.chat_template, [*messages, {"role": "user", "content": user}])
        else:
            lines = [f"System: {self.system}"] if self.system else []
            lines += [f"{who}: {text}" for u, a in turns for who, text in (("User", u), ("Assistant", a))]
            text = format_prompt(user, "\n\n".join(lines), self.style)
        return encode_prompt(self.tokenizer, text, self.style)

    def prompt(self, user: str) -> tuple[list[int], int]:
        """Return the prompt ids for ``user``'s next message and how many of the oldest turns were
        dropped (for good) to fit the budget; a single message still too long keeps its last tokens."""
        dropped = 0
        ids = self._ids(self.turns, user)
        while len(ids) > self.budget and self.turns:
            self.turns.pop(0)
            dropped += 1
            ids = self._ids(self.turns, user)
        return ids[-self.budget :], dropped


def stream_answer(model: GPT, tokenizer: Tokenizer, ids: list[int], cfg: SamplingConfig, out: TextIO | None = None, use_cache: bool = True) -> tuple[str, bool]:
    """Generate the continuation of ``ids``, writing its text to ``out`` as it comes, up to a stop
    token; Ctrl-C stops it early. ``out``: None writes to the current ``sys.stdout``. Return ``(text, interrupted)``."""
    out = out if out is not None else sys.stdout  # looked up per call: a default bound at import would keep a replaced stream
    text, decoder, ends = [], tokenizer.decode_stream(), set(tokenizer.stop_tokens)
    interrupted = False
    try:
        for tokens, _ in stream(model, [ids], cfg, stop_tokens=sorted(ends), use_cache=use_cache, pad_token=tokenizer.eot_token):
            token = tokens[0]
            if token in ends:
                break
            piece = decoder.add(token)
            text.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        interrupted = True
    tail = decoder.flush()
    out.write(tail)
    return "".join(text) + tail, interrupted


def chat_loop(
    model: GPT, tokenizer: Tokenizer, conversation: Conversation, cfg: SamplingConfig, read: Callable[[str], str] = input, out: TextIO | None = None
) -> None:
    """Read user lines with ``read`` (``input``) and stream the answers to ``out`` until ``/exit``
    or end of input; ``/reset`` starts the conversation over. Ctrl-C while an answer streams ends
    that answer (kept in the history as far as it got); at the prompt it clears the line.
    ``out``: None writes to the current ``sys.stdout``."""
    out = out if out is not None else sys.stdout
    while True:
        try:
            line = read("> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n")
            continue
        command = line.strip()
        if command == "/exit":
            return
        if command == "/reset":
            conversation.reset()
            out.write("(conversation cleared)\n")
            continue
        if not command:
            continue
        ids, dropped = conversation.prompt(line)
        if dropped:
            out.write(f"(the conversation is longer than the context: dropped the {dropped} oldest turn(s))\n")
        answer, interrupted = stream_answer(model, tokenizer, ids, cfg, out)
        out.write(" [stopped]\n" if interrupted else "\n")
        conversation.add(line, answer)
