"""Batched serving (issue 26): concurrent clients of a real server on 127.0.0.1 get exactly the
answers they get alone, a client that leaves frees its row for a waiting one, and no request
waits behind more than ``--max-batch`` others."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from gptlab.sampling import SamplingConfig
from gptlab.serve import Engine, build_app, running_server
from gptlab.tokenizer import gpt2
from tests.helpers.models import tiny_gpt2
from tests.serve.helpers import CHAT, ndjson

STEP_S = 0.02  # each forward is slowed this much, so requests sent together overlap


@pytest.fixture(scope="module")
def model():
    """The tiny GPT-2-shaped model (context 64) of the serve tests."""
    return tiny_gpt2().eval()


def slowed(app, step_s: float = STEP_S):
    """Return ``app`` with its model's forward slowed by ``step_s`` seconds."""
    model = app.state.engine.model
    original = model.forward

    def slow(*args, **kwargs):
        time.sleep(step_s)
        return original(*args, **kwargs)

    model.forward = slow
    return app


REQUESTS = [
    ("/v1/completions", {"prompt": "Once upon", "max_tokens": 20, "temperature": 0}),
    ("/v1/completions", {"prompt": "The capital of France is a long way", "max_tokens": 12, "temperature": 0.9, "seed": 5, "top_p": 0.9}),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 16, "temperature": 0, "frequency_penalty": 1.0}),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 9, "temperature": 1.1, "seed": 11, "extra_body": {"min_p": 0.05}}),
    ("/api/generate", {"prompt": "hi", "raw": True, "stream": False, "options": {"num_predict": 25, "seed": 1, "temperature": 1.0, "repeat_penalty": 1.3}}),
    ("/api/chat", {"messages": CHAT, "stream": False, "options": {"num_predict": 10, "temperature": 0}}),
    ("/api/generate", {"prompt": "A stream", "raw": True, "options": {"num_predict": 18, "temperature": 0.7, "seed": 2}}),  # Ollama streams by default
    ("/v1/completions", {"prompt": "Streamed", "max_tokens": 14, "temperature": 0, "stream": True}),
]


def answer(base: str, path: str, body: dict) -> str:
    """Return the text the server answers ``body`` with, through the official openai client on /v1 and httpx on /api."""
    if path.startswith("/v1"):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        if path == "/v1/completions":
            if body.get("stream"):
                return "".join(c.choices[0].text for c in client.completions.create(model="tiny", **body))
            return client.completions.create(model="tiny", **body).choices[0].text
        return client.chat.completions.create(model="tiny", **body).choices[0].message.content
    r = httpx.post(base + path, json=body, timeout=60)
    lines = ndjson(r)
    key = "response" if path == "/api/generate" else "message"
    return "".join(line[key] if key == "response" else line[key]["content"] for line in lines)


def test_concurrent_clients_get_the_answers_they_get_alone(model_dir):
    app = slowed(build_app(model_dir, model_name="tiny", max_batch=8))
    engine = app.state.engine
    with running_server(app) as base:
        plain = answer(base, "/v1/completions", {"prompt": "Stop me", "max_tokens": 16, "temperature": 0})
        requests = [*REQUESTS, ("/v1/completions", {"prompt": "Stop me", "max_tokens": 16, "temperature": 0, "stop": [plain[6:9]]})]
        alone = [answer(base, path, body) for path, body in requests]
        assert alone[-1] == plain[: plain.index(plain[6:9])]  # the stop string cut it
        engine.batch_sizes.clear()
        start = threading.Barrier(len(requests))

        def together(i: int) -> str:
            start.wait()
            return answer(base, *requests[i])

        with ThreadPoolExecutor(len(requests)) as pool:
            batched = list(pool.map(together, range(len(requests))))
    assert batched == alone and all(alone)
    assert max(engine.batch_sizes) >= 4 and max(engine.batch_sizes) <= 8, engine.batch_sizes  # generated together, at most --max-batch


def test_a_client_that_leaves_frees_its_row_for_a_waiting_one(model_dir):
    app = slowed(build_app(model_dir, model_name="tiny", max_batch=2), 0.03)
    engine, finished = app.state.engine, []
    original = engine.complete

    def spy(*args, **kwargs):
        finished.append(original(*args, **kwargs))
        return finished[-1]

    long_body = {"prompt": "hi", "raw": True, "stream": False, "options": {"num_predict": 40, "temperature": 0}}
    short_body = {"prompt": "Name", "raw": True, "stream": False, "options": {"num_predict": 6, "temperature": 0}}
    with running_server(app) as base:
        expected = [httpx.post(f"{base}/api/generate", json=b, timeout=60).json()["response"] for b in (long_body, short_body)]
        engine.complete = spy
        done: dict[str, tuple[str, float]] = {}

        def post(name: str, body: dict) -> None:
            reply = httpx.post(f"{base}/api/generate", json=body, timeout=60).json()["response"]
            done[name] = (reply, time.monotonic())

        def wait_for(condition, what: str) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.005)

        with httpx.stream("POST", f"{base}/api/generate", json={"prompt": "hi", "raw": True, "options": {"num_predict": 1000}}, timeout=60) as r:
            lines = r.iter_lines()
            next(lines), next(lines)  # the leaving client is generating
            long = threading.Thread(target=post, args=("long", long_body))
            long.start()
            wait_for(lambda: engine.batch_sizes[-1] == 2, "the long request joined the batch")
            short = threading.Thread(target=post, args=("short", short_body))
            short.start()
            wait_for(lambda: len(engine.queue) == 1, "the short request waits: the batch is full")
        # the streaming client left: its row is free for the short request, which finishes before the long one
        long.join(60)
        short.join(60)
    assert [done["long"][0], done["short"][0]] == expected
    assert done["short"][1] < done["long"][1], "the short request waited for the long one instead of taking the freed row"
    left = [c for c in finished if c.finish_reason == "cancelled"]
    assert len(left) == 1 and 2 <= left[0].completion_tokens < 60 and max(engine.batch_sizes) == 2


@pytest.mark.parametrize("clients", [3, 4])
def test_no_request_waits_behind_more_than_max_batch_others(model_dir, clients):
    app = slowed(build_app(model_dir, model_name="tiny", max_batch=3))
    engine = app.state.engine
    first: list[float] = []
    ends: list[float] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        body = {"prompt": f"Client {i}", "raw": True, "options": {"num_predict": 30, "temperature": 0}}
        with httpx.stream("POST", f"{base}/api/generate", json=body, timeout=60) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n == 0:
                    with lock:
                        first.append(time.monotonic())
        with lock:
            ends.append(time.monotonic())

    with running_server(app) as base:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    first.sort()
    assert len(first) == len(ends) == clients and max(engine.batch_sizes) <= 3
    assert first[2] < min(ends)  # three requests generate together: none waits for another to finish
    if clients == 4:
        assert first[3] > min(ends) - 0.2  # the fourth waited for a free row (at most a step or so before the first end is seen)


def test_a_request_that_would_make_the_batch_outgrow_the_context_waits_its_turn(model):
    """Tiny context (64): a 40-token prompt with 10 to go and a 2-token prompt with 50 to go would need 90 columns."""
    engine = Engine(model, gpt2(), max_batch=4)
    long_prompt = [11] * 40
    jobs = [(long_prompt, SamplingConfig(10, 0.0)), ([5, 6], SamplingConfig(50, 0.0)), ([7, 8, 9], SamplingConfig(8, 0.0))]
    try:
        alone = [engine.complete(ids, cfg).text for ids, cfg in jobs]
        engine.batch_sizes.clear()
        original = engine.model.forward

        def slow(*args, **kwargs):
            time.sleep(STEP_S)
            return original(*args, **kwargs)

        engine.model.forward = slow
        with ThreadPoolExecutor(3) as pool:
            futures = []
            for ids, cfg in jobs:
                futures.append(pool.submit(engine.complete, ids, cfg))
                time.sleep(0.05)  # in this order
            together = [f.result().text for f in futures]
    finally:
        engine.close()
    assert together == alone
    assert list(engine.batch_sizes) == [1, 2]  # the second waited for the first to finish; the third, which would fit, did not overtake it
