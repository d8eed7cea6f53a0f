"""`gptlab serve` through the official `ollama` Python client: chat, generate, list, show, ps, streaming."""

import httpx
import ollama
import pytest

from gptlab import __version__
from tests.serve.helpers import CHAT

GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def client(url):
    return ollama.Client(host=url, timeout=30)


def test_chat_and_generate_streaming_and_not(client):
    whole = client.chat(model="tiny", messages=CHAT, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content and whole.done and whole.done_reason == "length" and whole.eval_count == 8
    parts = list(client.chat(model="tiny", messages=CHAT, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content and parts[-1].done and not parts[0].done
    text = client.generate(model="tiny:latest", prompt="Once upon", raw=True, options=GREEDY)
    streamed = list(client.generate(model="tiny", prompt="Once upon", raw=True, options=GREEDY, stream=True))
    assert text.response and "".join(p.response for p in streamed) == text.response and text.prompt_eval_count == 2


def test_list_show_ps_and_version(client, url):
    assert [m.model for m in client.list().models] == ["tiny"]
    shown = client.show("tiny")
    assert shown.details.family == "gpt2" and shown.details.format == "safetensors" and shown.capabilities == ["completion"]
    assert shown.modelinfo["gpt2.context_length"] == 64 and shown.modelinfo["general.parameter_count"] > 0
    assert "### Instruction:\n{{ .Prompt }}" in shown.template and "temperature 0.8" in shown.parameters
    running = client.ps().models
    assert [m.name for m in running] == ["tiny"] and running[0].context_length == 64 and running[0].size > 0 and running[0].size_vram == 0
    assert httpx.get(f"{url}/api/version").json() == {"version": __version__}


def test_errors_reach_the_client(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3", messages=CHAT)
    assert err.value.status_code == 404 and 'model "llama3" not found' in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.show("llama3")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny", messages=CHAT, format="json")
    assert err.value.status_code == 400 and "format" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="x", options={"top_k": -3})
    assert err.value.status_code == 400 and "options.top_k must be >= 0" in err.value.error
