"""Bad input never gets a 500 or a hang: lone surrogates, deep nesting, non-finite numbers, huge
declared bodies, prompts over the context, runaway chat templates, requests without Host, and
sampling parameters gptlab does not implement (issue 24 items 2-6 and 8, issue 26 item 5)."""

import json
import socket
import threading
import time

import httpx
import ollama
import openai
import pytest

from gptlab.serve import create_app, running_server
from gptlab.serve import prompts as serve_prompts
from gptlab.tokenizer import GPT2Tokenizer, gpt2
from tests.helpers.models import tiny_gpt2
from tests.serve.helpers import CHAT, ndjson, sse

ROUTES = [
    ("/v1/completions", "prompt"),
    ("/v1/chat/completions", "messages"),
    ("/api/generate", "prompt"),
    ("/api/chat", "messages"),
]


def _body(path: str, text: str) -> dict:
    if path.endswith("completions") and "chat" not in path or path == "/api/generate":
        return {"prompt": text, "stream": False, **({"options": {"num_predict": 1}} if path.startswith("/api") else {"max_tokens": 1})}
    return {
        "messages": [{"role": "user", "content": text}],
        "stream": False,
        **({"options": {"num_predict": 1}} if path.startswith("/api") else {"max_tokens": 1}),
    }


def _error(r: httpx.Response) -> str:
    e = r.json()["error"]
    return e["message"] if isinstance(e, dict) else e


@pytest.mark.parametrize("path,field", ROUTES)
def test_a_lone_surrogate_is_a_400_naming_the_field(url, path, field):
    raw = json.dumps(_body(path, "hi \ud800 there")).encode()  # ASCII JSON: the surrogate is the escape \ud800
    assert b"\\ud800" in raw
    r = httpx.post(url + path, content=raw)
    assert r.status_code == 400, r.text
    where = "messages[0].content" if field == "messages" else "prompt"
    assert f"{where} holds a lone surrogate (\\ud800) at character 3" in _error(r)
    pair = httpx.post(url + path, json=_body(path, "hi \U0001f600"))  # a valid pair is text like any other
    assert pair.status_code == 200


@pytest.mark.parametrize("path,_", ROUTES)
def test_deep_nesting_and_non_finite_numbers_are_400s(url, path, _):
    r = httpx.post(url + path, content=b"[" * 50_000)
    assert r.status_code == 400 and "nested 50000 levels deep" in _error(r)
    r = httpx.post(url + path, content=b'{"x": ' + b"{" * 100 + b"}" * 100 + b"}")
    assert r.status_code == 400 and "nested 101 levels deep" in _error(r)
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        r = httpx.post(url + path, content=b'{"prompt": "x", "temperature": ' + literal + b"}")
        assert r.status_code == 400 and f"{literal.decode()} is not a JSON number" in _error(r)
    r = httpx.post(url + path, content=b'{"prompt": "x", "options": {"temperature": 1e999}}')
    assert r.status_code == 400 and "options.temperature must be a finite number, got inf" in _error(r)


def test_a_huge_declared_body_is_a_413_at_once(url):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        start = time.perf_counter()
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{}")
        reply = s.recv(4096).decode()
        waited = time.perf_counter() - start
    assert reply.startswith("HTTP/1.1 413") and "exceeds the limit of" in reply and waited < 2, (reply, waited)
    assert httpx.get(f"{url}/api/version").status_code == 200


def test_a_client_leaving_mid_body_is_one_log_line(url, caplog_uvicorn):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n" + b'{"messages": [')
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while not caplog_uvicorn and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for record in caplog_uvicorn for line in record.splitlines()]
    assert len(lines) == 1 and "client disconnected after 14 of 500 body bytes" in lines[0], lines
    assert httpx.get(f"{url}/api/version").status_code == 200


@pytest.fixture
def caplog_uvicorn():
    """Messages logged to uvicorn's error log (where the server's one-line reports go), tracebacks included."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.parametrize("path", ["/v1/completions", "/api/generate"])
def test_a_prompt_over_the_context_is_a_400_naming_both_lengths(url, path):
    long = " x" * 100  # 100 tokens: over the tiny model's 64
    body = {"prompt": long, "stream": False, **({"raw": True, "options": {"num_predict": 3}} if path.startswith("/api") else {"max_tokens": 3})}
    r = httpx.post(url + path, json=body)
    assert r.status_code == 400 and "the prompt is 100 tokens and the model's context is 64 tokens" in _error(r)
    truncation = {"raw": True, "truncate": True} if path.startswith("/api") else {"truncate_prompt_tokens": 40}
    r = httpx.post(url + path, json={**body, **truncation}, timeout=30)
    assert r.status_code == 200
    used = r.json()["prompt_eval_count"] if path.startswith("/api") else r.json()["usage"]["prompt_tokens"]
    assert used == (61 if path.startswith("/api") else 40)  # the tokens actually used


def test_max_tokens_are_capped_to_the_room_the_context_leaves(url):
    r = httpx.post(f"{url}/v1/completions", json={"prompt": " x" * 60, "max_tokens": 1000, "temperature": 0}, timeout=30)
    usage = r.json()["usage"]
    assert r.status_code == 200 and usage == {"prompt_tokens": 60, "completion_tokens": 4, "total_tokens": 64}
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_unimplemented_samplers_are_refused_on_both_routes(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    for extra, name in [
        ({"mirostat": 2}, "mirostat is not a parameter"),
        ({"typical_p": 0.5}, "typical_p is not a parameter"),
        ({"min_p": 1.5}, "min_p must be <= 1, got 1.5"),
        ({"repetition_penalty": 0}, "repetition_penalty must be > 0, got 0"),
        ({"frequency_penalty": 2.5}, "frequency_penalty must be <= 2, got 2.5"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1, extra_body=extra)
        assert name in err.value.message and err.value.body["param"] == next(iter(extra))
    with pytest.raises(openai.BadRequestError, match="logit_bias="):
        client.completions.create(model="tiny", prompt="x", max_tokens=1, logit_bias={"50256": -100})
    ok = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1, user="me", extra_body={"min_p": 0, "repetition_penalty": 1, "metadata": {}})
    assert ok.choices[0].finish_reason in ("stop", "length")
    o = ollama.Client(host=url, timeout=30)
    for options, words in [
        ({"mirostat": 2}, "options.mirostat=2"),
        ({"typical_p": 0.5}, "options.typical_p=0.5"),
        ({"tfs_z": 0.5}, "options.tfs_z=0.5"),
        ({"min_p": 1.5}, "options.min_p must be <= 1"),
        ({"repeat_penalty": 0}, "options.repeat_penalty must be > 0"),
        ({"repeat_last_n": -2}, "options.repeat_last_n must be >= -1"),
        ({"made_up": 1}, "options.made_up is not"),
    ]:
        with pytest.raises(ollama.ResponseError) as err:
            o.chat(model="tiny", messages=CHAT, options=options)
        assert err.value.status_code == 400 and words in err.value.error
    assert o.chat(model="tiny", messages=CHAT, options={"num_predict": 1, "num_ctx": 4096, "mirostat_tau": 5.0}).done


def test_no_host_header_is_refused(url):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /api/version HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403") and b"without a Host header" in reply, reply


class TemplatedTokenizer(GPT2Tokenizer):
    """GPT-2's tokenizer carrying a (runaway) chat template, as a model folder's tokenizer can."""

    def __init__(self, chat_template: str):
        super().__init__(gpt2().encoding)
        self.chat_template = chat_template


NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}hi"
WIDE = "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}"
STAR = "{{ 'x' * 10000000000 }}"


@pytest.mark.parametrize("template,bound", [(NESTED, "exceeded 1 s"), (WIDE, "exceeded 100000 characters"), (STAR, "characters")])
def test_a_runaway_chat_template_is_bounded_and_the_server_keeps_answering(monkeypatch, template, bound):
    monkeypatch.setattr(serve_prompts, "TEMPLATE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serve_prompts, "TEMPLATE_MAX_CHARS", 100_000)
    app = create_app(tiny_gpt2(), TemplatedTokenizer(template), "evil")
    with running_server(app) as base:
        answers: list = []
        thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/api/chat", json={"messages": CHAT, "stream": False}, timeout=60)))
        thread.start()
        time.sleep(0.2)
        start = time.perf_counter()
        assert httpx.get(f"{base}/api/version", timeout=5).status_code == 200  # the event loop is free
        assert time.perf_counter() - start < 0.5
        thread.join(30)
        r = answers[0]
        assert r.status_code == 422 and bound in r.json()["error"] and "chat_template" in r.json()["error"], r.text
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": CHAT}, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["code"] == "chat_template_bound"
        worker = [t for t in threading.enumerate() if t.name.startswith("gptlab-prepare")]
        time.sleep(0.2)
        assert all(not t.is_alive() or not _busy(t) for t in worker)  # the render stopped: no thread spins on


def _busy(thread: threading.Thread) -> bool:
    """Return True when ``thread`` is running Python code (not idle waiting for work)."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident)
    return frame is not None and "jinja" in "".join(traceback.format_stack(frame))


def test_streams_still_end_with_their_final_chunks(url):
    events = sse(httpx.post(f"{url}/v1/chat/completions", json={"messages": CHAT, "stream": True, "max_tokens": 3}))
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    lines = ndjson(httpx.post(f"{url}/api/chat", json={"messages": CHAT, "options": {"num_predict": 3}}))
    assert lines[-1]["done"] is True
