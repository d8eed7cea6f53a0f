"""Request bodies are typed: bad sampling values and unsupported parameters get a 400 naming them."""

import httpx
import pytest

from tests.serve.helpers import CHAT


@pytest.mark.parametrize(
    "options,message",
    [
        ({"top_k": -3}, "options.top_k must be >= 0, got -3"),
        ({"top_p": 5}, "options.top_p must be <= 1, got 5"),
        ({"temperature": -0.5}, "options.temperature must be >= 0, got -0.5"),
        ({"num_predict": -7}, "options.num_predict must be >= -2, got -7"),
        ({"top_k": "many"}, 'options.top_k must be an integer, got "many"'),
        ({"seed": 1.5}, "options.seed must be an integer, got 1.5"),
        ({"stop": [1]}, "options.stop[0] must be a string, got 1"),
        ({"mirostat": 1}, "options.mirostat=1 is not supported by gptlab serve; remove it from the request"),
        ({"repeat_penalty": -1}, "options.repeat_penalty must be > 0, got -1"),
    ],
)
def test_ollama_options_are_checked(url, options, message):
    r = httpx.post(f"{url}/api/generate", json={"model": "tiny", "prompt": "x", "options": options})
    assert r.status_code == 400 and r.json() == {"error": message}


@pytest.mark.parametrize(
    "extra,param,words",
    [
        ({"top_p": 5}, "top_p", "top_p must be <= 1, got 5"),
        ({"top_k": -3}, "top_k", "top_k must be >= -1, got -3"),
        ({"temperature": "5"}, "temperature", 'temperature must be a number, got "5"'),
        ({"max_tokens": -1}, "max_tokens", "max_tokens must be >= 0"),
        ({"n": 2}, "n", "only n=1 is supported"),
        ({"logprobs": True}, "logprobs", "logprobs=true is not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "response_format="),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tools="),
        ({"tool_choice": "required"}, "tool_choice", "tool_choice="),
        ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be <= 2, got 2.5"),
        ({"logit_bias": {"1": 5}}, "logit_bias", 'logit_bias={"1": 5} is not supported'),
        ({"stream": "yes"}, "stream", 'stream must be true or false, got "yes"'),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages", "only text content parts"),
        ({"messages": []}, "messages", "messages must be a non-empty list"),
    ],
)
def test_openai_parameters_are_checked(url, extra, param, words):
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": CHAT, **extra})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path,extra,words",
    [
        ("/api/chat", {"format": "json"}, 'format="json" is not supported'),
        ("/api/chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools="),
        ("/api/chat", {"think": True}, "think=true is not supported"),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "messages[0].images="),
        ("/api/generate", {"prompt": "x", "format": {"type": "object"}}, "format="),
        ("/api/generate", {"prompt": "x", "suffix": "end"}, 'suffix="end" is not supported'),
    ],
)
def test_ollama_unsupported_features_are_refused(url, path, extra, words):
    r = httpx.post(url + path, json={"model": "tiny", "messages": CHAT, **extra})
    assert r.status_code == 400 and words in r.json()["error"]


def test_off_values_and_unknown_fields_are_accepted(url):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 1, "tools": [], "response_format": {"type": "text"}, "presence_penalty": 0, "logprobs": False}
    assert httpx.post(f"{url}/v1/chat/completions", json={**body, "user": "me", "top_k": -1, "top_p": 1}).status_code == 200
    options = {"num_predict": 1, "num_ctx": 2048, "repeat_penalty": 1.0, "top_k": 0, "top_p": 0}
    r = httpx.post(
        f"{url}/api/chat", json={"model": "tiny", "messages": CHAT, "stream": False, "tools": [], "format": "", "keep_alive": "5m", "options": options}
    )
    assert r.status_code == 200 and r.json()["eval_count"] == 1
