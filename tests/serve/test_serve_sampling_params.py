"""Sampling parameters clients send (issue 26): min_p and the penalties through the official
`openai` and `ollama` clients give exactly what the one sampler gives for the same settings."""

import ollama
import openai
import pytest

from gptlab.lora import load_merged
from gptlab.sampling import SamplingConfig, generate

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def local(model_dir):
    """The served model and tokenizer, loaded here: what the library's sampler answers."""
    model, tok = load_merged(model_dir)
    return model.eval(), tok


def library_text(local, cfg: SamplingConfig) -> str:
    model, tok = local
    return tok.decode(generate(model, [tok.encode_ordinary(PROMPT)], cfg, stop_tokens=tok.stop_tokens)[0])


@pytest.mark.parametrize(
    "extra,cfg",
    [
        ({"frequency_penalty": 2.0}, SamplingConfig(24, 0.0, frequency_penalty=2.0)),
        ({"presence_penalty": 1.5, "frequency_penalty": -0.5}, SamplingConfig(24, 0.0, presence_penalty=1.5, frequency_penalty=-0.5)),
        ({"extra_body": {"repetition_penalty": 1.5}}, SamplingConfig(24, 0.0, repetition_penalty=1.5)),
        ({"seed": 7, "temperature": 1.0, "extra_body": {"min_p": 0.2}}, SamplingConfig(24, 1.0, seed=7, min_p=0.2)),
    ],
)
def test_openai_client_penalties_and_min_p_match_the_sampler(url, local, extra, cfg):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    extra = {"temperature": 0, **extra}
    text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, **extra).choices[0].text
    assert text == library_text(local, cfg)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, stream=True, **extra))
    assert streamed == text


def test_the_penalties_change_the_answer(url, local):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    penalized = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, frequency_penalty=2.0).choices[0].text
    model, tok = local
    ids = tok.encode_ordinary(PROMPT)
    tokens = [generate(model, [ids], SamplingConfig(24, 0.0, frequency_penalty=f))[0] for f in (0.0, 2.0)]
    assert penalized != plain and [tok.decode(t) for t in tokens] == [plain, penalized]
    assert len(set(tokens[1])) > len(set(tokens[0]))  # fewer repeats


@pytest.mark.parametrize(
    "options,cfg",
    [
        ({"repeat_penalty": 1.8}, SamplingConfig(24, 0.0, repetition_penalty=1.8, penalty_last_n=64)),  # Ollama's window: 64
        ({"repeat_penalty": 1.8, "repeat_last_n": 3}, SamplingConfig(24, 0.0, repetition_penalty=1.8, penalty_last_n=3)),
        ({"repeat_penalty": 1.8, "repeat_last_n": -1}, SamplingConfig(24, 0.0, repetition_penalty=1.8, penalty_last_n=64)),  # -1: the context (64)
        ({"frequency_penalty": 1.0, "presence_penalty": 0.5}, SamplingConfig(24, 0.0, frequency_penalty=1.0, presence_penalty=0.5, penalty_last_n=64)),
        ({"temperature": 0.9, "seed": 3, "min_p": 0.1, "top_k": 0, "top_p": 1}, SamplingConfig(24, 0.9, seed=3, min_p=0.1)),
    ],
)
def test_ollama_client_options_match_the_sampler(url, local, options, cfg):
    client = ollama.Client(host=url, timeout=30)
    reply = client.generate(model="tiny", prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": 24, **options})
    assert reply.response == library_text(local, cfg)


def test_repeat_last_n_zero_turns_the_penalties_off(url):
    client = ollama.Client(host=url, timeout=30)
    plain = client.generate(model="tiny", prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": 24}).response
    off = client.generate(model="tiny", prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": 24, "repeat_penalty": 3, "repeat_last_n": 0})
    assert off.response == plain
    assert "repeat_penalty 1\nrepeat_last_n 64" in client.show("tiny").parameters
