"""Shared pieces of the ``gptlab serve`` tests: a chat and response parsers (the tiny checkpoint is the ``model_dir`` fixture)."""

from __future__ import annotations

import json

import httpx

CHAT = [{"role": "user", "content": "Name a colour."}]


def ndjson(resp: httpx.Response) -> list[dict]:
    """Return the JSON objects of an NDJSON response."""
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def sse(resp: httpx.Response) -> list:
    """Return the JSON events of a server-sent-events response (which must end with ``[DONE]``)."""
    events = [line.removeprefix("data: ") for line in resp.text.split("\n\n") if line.strip()]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]
