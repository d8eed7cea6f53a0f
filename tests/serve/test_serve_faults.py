"""Faults against a real `gptlab serve` process on 127.0.0.1: SIGTERM mid-stream drains for the
grace period and ends every stream with its final chunk; a client that half-closes or leaves
mid-body costs one log line, no traceback, and the server stays healthy."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.model import GPT
from tests.serve.helpers import CHAT

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 1.0
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory):
    """A small GPT-2-shaped model with a long context, so 1,000 tokens take a few seconds."""
    import torch

    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("faults") / "slow", GPT(GPTConfig(vocab_size=50257, context_length=2048, emb_dim=128, n_heads=4, n_layers=4)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(slow_model_dir):
    """A `gptlab serve` subprocess (grace 1 s); yields (process, base URL); its stderr is read after it exits."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-m", "gptlab.cli", "serve", "--model", str(slow_model_dir), "--port", str(port), "--threads", "1", "--grace", str(GRACE_S)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/version", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"gptlab serve did not start: {proc.communicate()[1]}")
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_mid_stream_drains_then_ends_each_stream_with_its_final_chunk(server):
    proc, base = server
    results: dict[str, list[str]] = {}

    def read(name: str, path: str, body: dict) -> None:
        with httpx.stream("POST", base + path, json=body, timeout=60) as r:
            results[name] = [line for line in r.iter_lines() if line.strip()]

    sse = threading.Thread(target=read, args=("sse", "/v1/chat/completions", {"messages": CHAT, "stream": True, "max_tokens": 1000}))
    nd = threading.Thread(target=read, args=("ndjson", "/api/generate", {"prompt": "hi", "raw": True, "options": {"num_predict": 1000}}))
    sse.start()
    time.sleep(0.5)  # the SSE stream is generating; the NDJSON one waits for the model
    nd.start()
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=GRACE_S + 15)
    took = time.monotonic() - start
    sse.join(10)
    nd.join(10)
    assert took < GRACE_S + 4, f"serve took {took:.1f} s to exit after SIGTERM"
    events = [e.removeprefix("data: ") for e in results["sse"]]
    assert events[-1] == "[DONE]", events[-3:]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "shutdown"  # 1,000 tokens take ~10 s
    last = json.loads(results["ndjson"][-1])
    assert last["done"] is True and last["done_reason"] == "shutdown", last
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "draining 2 request(s) in flight for up to 1 s" in stderr, stderr


def test_a_half_closed_client_and_one_leaving_mid_body_cost_one_line_each(server):
    proc, base = server
    port = int(base.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "hi", "raw": True, "stream": False, "options": {"num_predict": 200}}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a request, then the write side shut
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(65536)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 200"), reply[:200]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # a body cut short
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n" + b'{"messages": [')
        time.sleep(0.3)
    time.sleep(0.5)
    r = httpx.post(f"{base}/api/generate", json={"prompt": "hi", "raw": True, "stream": False, "options": {"num_predict": 3}}, timeout=30)
    assert r.status_code == 200 and r.json()["eval_count"] == 3
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=GRACE_S + 15)
    assert "Traceback" not in stderr and "ClientDisconnect" not in stderr, stderr
    assert len([line for line in stderr.splitlines() if "disconnected" in line]) == 1, stderr
