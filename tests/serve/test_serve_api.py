"""`gptlab serve` over HTTP: both APIs, streaming, stop strings, errors, concurrency, cancellation."""

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from gptlab.data.prompts import format_prompt
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.serve import build_app, create_app, running_server
from gptlab.tokenizer import gpt2
from tests.helpers.models import TINY_GPT2
from tests.serve.helpers import CHAT, ndjson, sse

LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def url(model_dir):
    with running_server(build_app(model_dir, model_name="tiny", max_body_bytes=LIMIT)) as base:
        yield base


def test_listing_endpoints(url):
    tags = httpx.get(f"{url}/api/tags").json()
    assert [m["name"] for m in tags["models"]] == ["tiny"] and tags["models"][0]["details"]["family"] == "gpt2"
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny"
    assert httpx.get(f"{url}/api/version").json()["version"]


@pytest.mark.parametrize("path,key", [("/api/generate", "response"), ("/api/chat", "message")])
def test_ollama_stream_and_not_agree(url, path, key):
    body = {"model": "tiny:latest", "options": {"temperature": 0, "num_predict": 12}}
    body.update({"prompt": "Name a colour."} if key == "response" else {"messages": CHAT})
    whole = httpx.post(url + path, json={**body, "stream": False}).json()
    lines = ndjson(httpx.post(url + path, json=body))  # Ollama streams by default
    text = whole[key] if key == "response" else whole[key]["content"]
    assert whole["done"] is True and whole["done_reason"] == "length" and whole["eval_count"] == 12 and text
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    pieces = [line[key] if key == "response" else line[key]["content"] for line in lines]
    assert "".join(pieces) == text and pieces[-1] == ""
    assert lines[-1]["eval_count"] == 12 and lines[-1]["prompt_eval_count"] == len(gpt2().encode_ordinary(format_prompt("Name a colour.")))


def test_ollama_generate_raw_is_plain_continuation(url):
    options = {"temperature": 0, "num_predict": 5}
    raw = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": "Once upon", "raw": True, "stream": False, "options": options}).json()
    assert raw["prompt_eval_count"] == 2
    openai_text = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Once upon", "temperature": 0, "max_tokens": 5}).json()
    assert openai_text["choices"][0]["text"] == raw["response"] and openai_text["usage"]["completion_tokens"] == 5


def test_official_openai_client(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == ["tiny"]
    resp = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 10 and resp.object == "chat.completion"
    chunks = list(
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10
    text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0, stream=True))
    assert text.choices[0].text == streamed
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=CHAT)


def test_stop_strings_cut_the_text_streaming_and_not(url):
    base = {"model": "tiny", "messages": CHAT, "temperature": 0, "max_tokens": 20}
    full = httpx.post(f"{url}/v1/chat/completions", json=base).json()["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    whole = httpx.post(f"{url}/v1/chat/completions", json={**base, "stop": [stop, "never seen"]}).json()
    assert whole["choices"][0]["message"]["content"] == expected and whole["choices"][0]["finish_reason"] == "stop"
    events = sse(httpx.post(f"{url}/v1/chat/completions", json={**base, "stop": stop, "stream": True}))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    lines = ndjson(httpx.post(f"{url}/api/chat", json={"model": "tiny", "messages": CHAT, "options": {"temperature": 0, "num_predict": 20, "stop": [stop]}}))
    assert "".join(line["message"]["content"] for line in lines) == expected and lines[-1]["done_reason"] == "stop"


def test_end_of_text_ends_generation():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(TINY_GPT2, tie_embeddings=False)).eval()
    with torch.no_grad():  # the final norm outputs all ones; only the end-of-text row of the head sees them
        model.final_norm.weight.zero_()
        model.final_norm.bias.fill_(1.0)
        model.head.weight.zero_()
        model.head.weight[50256].fill_(1.0)
    with running_server(create_app(model, gpt2(), "eot")) as base:
        whole = httpx.post(f"{base}/api/generate", json={"prompt": "hi", "stream": False, "options": {"num_predict": 50}}).json()
        assert whole["response"] == "" and whole["done_reason"] == "stop" and whole["eval_count"] == 0
        events = sse(httpx.post(f"{base}/v1/chat/completions", json={"messages": CHAT, "stream": True}))
        assert [e["choices"][0]["finish_reason"] for e in events] == [None, "stop"]


def test_errors_in_each_apis_shape(url):
    big = b'{"prompt": "' + b"x" * (2 * LIMIT) + b'"}'
    r = httpx.post(f"{url}/api/generate", content=big)
    assert r.status_code == 413 and "exceeds the limit of 16384 bytes" in r.json()["error"]
    r = httpx.post(f"{url}/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/api/chat", content=b'{"model": "tiny", "messages": [')
    assert r.status_code == 400 and r.json()["error"].startswith("request body is not valid JSON")
    r = httpx.post(f"{url}/v1/completions", content=b"[1, 2]")
    assert r.status_code == 400 and r.json()["error"]["message"] == "request body must be a JSON object"
    r = httpx.post(f"{url}/api/chat", json={"model": "llama3", "messages": CHAT})
    assert r.status_code == 404 and r.json() == {"error": 'model "llama3" not found; this server has "tiny"'}
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "llama3", "messages": CHAT})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": "x", "options": {"top_k": "many"}})
    assert r.status_code == 400 and r.json() == {"error": 'options.top_k must be an integer, got "many"'}
    r = httpx.get(f"{url}/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(f"{url}/api/tags").status_code == 200  # still serving


def test_fifty_concurrent_requests_then_still_up(url):
    def call(i: int) -> str:
        if i % 2:
            r = httpx.post(
                f"{url}/api/chat", json={"model": "tiny", "messages": CHAT, "stream": i % 4 == 1, "options": {"num_predict": 4, "seed": i}}, timeout=60
            )
            assert r.status_code == 200
            lines = ndjson(r)
            assert lines[-1]["done"] is True and lines[-1]["eval_count"] <= 4
            return "".join(line["message"]["content"] for line in lines)
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "max_tokens": 4, "seed": i}, timeout=60)
        assert r.status_code == 200
        body = r.json()
        assert body["usage"]["completion_tokens"] <= 4 and body["choices"][0]["finish_reason"] in ("stop", "length")
        return body["choices"][0]["message"]["content"]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        texts = list(pool.map(call, range(50)))
    elapsed = time.perf_counter() - start
    assert len(texts) == 50 and all(isinstance(t, str) for t in texts)
    assert len(set(texts)) > 1  # different seeds, different samples
    assert httpx.get(f"{url}/api/tags").json()["models"][0]["name"] == "tiny"
    print(f"50 concurrent requests in {elapsed:.2f} s")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_concurrent_identical_requests_are_not_mixed(url, temperature):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 24, "temperature": temperature, "seed": 7}
    barrier = threading.Barrier(2)

    def call(_: int) -> str:
        barrier.wait()
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(call, range(2))
    alone = httpx.post(f"{url}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert a == b == alone and alone


def test_adapter_is_loaded_then_merged(model_dir, tmp_path):
    from gptlab.checkpoint import load_model
    from gptlab.lora import inject_lora, merge_lora, model_hash, save_adapter
    from gptlab.params import LoraParams

    model, _ = load_model(model_dir)
    cfg = LoraParams(r=2, alpha=4, dropout=0.0)
    torch.manual_seed(5)
    inject_lora(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_adapter(model, cfg, tmp_path / "adapter", model_hash(model_dir))
    merged = merge_lora(model).eval()
    prompt = torch.tensor([gpt2().encode_ordinary(format_prompt("Name a colour."))])
    want = gpt2().decode(merged(prompt)[0][0, -1:].argmax(-1).tolist())
    app = build_app(model_dir, adapter_dir=tmp_path / "adapter")
    with running_server(app) as base:
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 1, "temperature": 0}
        got = httpx.post(f"{base}/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert got == want


def test_running_server_frees_its_port_and_reports_a_busy_one(model_dir):
    app = build_app(model_dir)
    with running_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(GptlabError, match=f"cannot listen on 127.0.0.1:{port}"):
            with running_server(app, port=port):
                pass
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/api/tags")


def test_a_client_leaving_mid_stream_stops_its_generation(model_dir):
    app = build_app(model_dir, model_name="tiny")
    engine, finished = app.state.engine, []
    original = engine.complete

    def spy(*args, **kwargs):
        finished.append(original(*args, **kwargs))
        return finished[-1]

    original_forward = engine.model.forward

    def slow_forward(*args, **kwargs):  # the 63 tokens the context leaves take 3 s or more
        time.sleep(0.05)
        return original_forward(*args, **kwargs)

    engine.complete, engine.model.forward = spy, slow_forward
    with running_server(app) as base:
        with httpx.stream("POST", f"{base}/api/generate", json={"prompt": "hi", "raw": True, "options": {"num_predict": 1000}}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 2:
                    break
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert finished[0].finish_reason == "cancelled" and 3 <= finished[0].completion_tokens < 63
        assert httpx.post(f"{base}/api/generate", json={"prompt": "hi", "stream": False, "options": {"num_predict": 2}}).json()["eval_count"] == 2


def test_a_failing_generation_is_a_json_500_or_an_in_band_error(model_dir):
    app = build_app(model_dir, model_name="tiny")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    app.state.engine.complete = boom
    with running_server(app) as base:
        r = httpx.post(f"{base}/api/chat", json={"messages": CHAT, "stream": False})
        assert r.status_code == 500 and r.json() == {"error": "generation failed: RuntimeError: boom"}
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert ndjson(httpx.post(f"{base}/api/chat", json={"messages": CHAT})) == [{"error": "generation failed: boom"}]
        events = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "stream": True}).text.split("\n\n")
        assert "generation failed: boom" in events[0] and events[1] == "data: [DONE]"
    with pytest.raises(GptlabError, match="prompt style 'chatml' is unknown"):
        create_app(app.state.engine.model, gpt2(), prompt_style="chatml")


@pytest.mark.parametrize(
    "path,body", [("/api/generate", {"raw": True, "stream": False, "options": {"num_predict": 1000}}), ("/v1/completions", {"max_tokens": 1000})]
)
def test_a_client_leaving_a_non_streaming_request_frees_the_model(model_dir, path, body):
    app = build_app(model_dir, model_name="tiny")
    engine, finished = app.state.engine, []
    original_complete, original_forward = engine.complete, engine.model.forward

    def spy(*args, **kwargs):
        finished.append(original_complete(*args, **kwargs))
        return finished[-1]

    def slow_forward(*args, **kwargs):  # the 63 tokens the context leaves take 3 s or more
        time.sleep(0.05)
        return original_forward(*args, **kwargs)

    engine.complete, engine.model.forward = spy, slow_forward
    with running_server(app) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + path, json={"prompt": "hi", **body}, timeout=0.5)
        start = time.perf_counter()
        r = httpx.post(f"{base}/api/generate", json={"prompt": "hi", "stream": False, "options": {"num_predict": 2}}, timeout=30)
        waited = time.perf_counter() - start
    assert r.json()["eval_count"] == 2 and waited < 3, f"the next request waited {waited:.2f} s"
    assert finished[0].finish_reason == "cancelled" and finished[0].completion_tokens < 40
