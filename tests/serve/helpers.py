"""Shared pieces of the ``gptlab serve`` tests: a tiny checkpoint and response parsers."""

from __future__ import annotations

import json

import httpx
import torch

from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.model import GPT

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)
CHAT = [{"role": "user", "content": "Name a colour."}]


def tiny_model_dir(tmp_path_factory, name: str = "serve"):
    """Return a folder with a tiny random GPT-2-shaped checkpoint (sharpened, so samples vary)."""
    torch.manual_seed(0)
    model = GPT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return save_model(tmp_path_factory.mktemp(name) / "tiny", model)


def ndjson(resp: httpx.Response) -> list[dict]:
    """Return the JSON objects of an NDJSON response."""
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def sse(resp: httpx.Response) -> list:
    """Return the JSON events of a server-sent-events response (which must end with ``[DONE]``)."""
    events = [line.removeprefix("data: ") for line in resp.text.split("\n\n") if line.strip()]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]
