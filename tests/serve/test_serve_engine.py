"""The serve engine and prompt builders without HTTP: alpaca folding, chat templates, cancellation."""

import asyncio
import time

import pytest

from gptlab.data.prompts import format_prompt
from gptlab.errors import GptlabError
from gptlab.sampling import SamplingConfig
from gptlab.serve import ApiError, ChatMessage, Engine, chat_prompt
from gptlab.serve.prompts import parse_messages
from gptlab.tokenizer import GPT2Tokenizer, gpt2
from tests.helpers.models import tiny_gpt2
from tests.serve.helpers import CHAT

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class TemplatedTokenizer(GPT2Tokenizer):
    """GPT-2's tokenizer with a chat template, as a Llama-family tokenizer will carry one."""

    def __init__(self, chat_template: str):
        super().__init__(gpt2().encoding)
        self.chat_template, self.bos_token = chat_template, "<s>"


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2().eval()


def test_chat_prompt_folds_system_and_earlier_turns_into_input():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue"},
    ]
    assert chat_prompt(messages) == format_prompt("Name a colour.", "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.") + "Blue"
    assert chat_prompt(CHAT) == format_prompt("Name a colour.")
    for bad in ([], [{"role": "system", "content": "x"}], "hi", [{"content": "x"}]):
        with pytest.raises(ApiError) as err:
            chat_prompt(bad)
        assert err.value.status == 400 and err.value.param == "messages"
    with pytest.raises(ApiError, match=r"messages\[0\]\.content: only text content parts are supported"):
        parse_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_a_tokenizer_with_a_chat_template_renders_it_with_its_special_tokens(model):
    engine = Engine(model, TemplatedTokenizer(TEMPLATE))
    try:
        prompt = engine.chat_prompt(parse_messages([{"role": "system", "content": "Be brief."}, *CHAT]))
        assert prompt.text == "<s><|system|>Be brief.<|endoftext|><|user|>Name a colour.<|endoftext|><|assistant|>"
        assert engine.encode(prompt).count(50256) == 2  # special-token text of the template is the token
        assert 50256 not in engine.encode("<|endoftext|>")  # a plain prompt's is text
        c = engine.complete(prompt, SamplingConfig(max_new_tokens=3, temperature=0))
        assert c.prompt_tokens == len(gpt2().encode(prompt.text, allowed_special="all"))
    finally:
        engine.close()
    failing = Engine(model, TemplatedTokenizer("{{ raise_exception('roles must alternate') }}"))
    with pytest.raises(ApiError, match="roles must alternate") as err:
        failing.chat_prompt([ChatMessage(role="user", content="hi")])
    assert err.value.status == 400
    failing.close()
    with pytest.raises(GptlabError, match="chat_template does not compile"):
        Engine(model, TemplatedTokenizer("{% for %}"))
    assert Engine(model, TemplatedTokenizer("  ")).chat_prompt(parse_messages(CHAT)).text == format_prompt("Name a colour.")  # empty: alpaca


def test_complete_async_stops_when_the_client_is_gone(model):
    engine = Engine(model, gpt2())
    original = engine.model.forward

    def slow(*args, **kwargs):
        time.sleep(0.005)
        return original(*args, **kwargs)

    engine.model.forward = slow
    start = time.perf_counter()

    async def gone() -> bool:
        return time.perf_counter() - start > 0.2

    try:
        c = asyncio.run(engine.complete_async("hi", SamplingConfig(max_new_tokens=1000, temperature=0), [], gone=gone))
    finally:
        engine.close()
    assert c.finish_reason == "cancelled" and 0 < c.completion_tokens < 200 and time.perf_counter() - start < 2
