"""One error convention: bad input raises GptlabError (ParamsError for params), never a bare
ValueError; the command line prints it as one line and the server answers it with a 400."""

import httpx
import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.data.prompts import format_prompt
from gptlab.errors import GptlabError, ParamsError
from gptlab.model import GPT
from gptlab.params import TokenizeParams
from gptlab.tokenizer import gpt2


def test_bad_input_raises_gptlab_error_not_value_error():
    with pytest.raises(ParamsError, match="val_fraction=1.5 is impossible") as info:
        TokenizeParams(val_fraction=1.5)
    assert not isinstance(info.value, ValueError)
    for bad in (lambda: GPTConfig(emb_dim=30, n_heads=4), lambda: format_prompt("x", style="nope")):
        with pytest.raises(GptlabError) as info:
            bad()
        assert not isinstance(info.value, ValueError)


def test_server_answers_gptlab_error_with_400_in_the_apis_shape():
    pytest.importorskip("fastapi")
    from gptlab.serve import create_app, running_server

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=1)).eval()
    app = create_app(model, gpt2(), "tiny")

    def refuse() -> None:
        raise GptlabError("prompt.txt: no such file; pass an existing file")

    app.add_api_route("/api/refuse", refuse)
    app.add_api_route("/v1/refuse", refuse)
    with running_server(app) as base:
        r = httpx.get(f"{base}/api/refuse")
        assert r.status_code == 400 and r.json() == {"error": "prompt.txt: no such file; pass an existing file"}
        r = httpx.get(f"{base}/v1/refuse")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
