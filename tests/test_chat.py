"""`gptlab chat` (multi-turn, streaming, /reset, /exit, Ctrl-D, Ctrl-C) and `gptlab sample` prompting a chat model as it was trained."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptlab.chat
from gptlab.chat import Conversation, chat_loop
from gptlab.checkpoint import load_model, save_model
from gptlab.cli import main
from gptlab.config import GPTConfig
from gptlab.convert.hf_tokenizer import to_hf_tokenizer
from gptlab.data.prompts import format_prompt, render_chat
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import HFTokenizer, gpt2

ROOT = Path(__file__).resolve().parents[1]
CFG = GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2)
TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny random model whose tokenizer carries a chat template."""
    torch.manual_seed(0)
    tok = HFTokenizer(to_hf_tokenizer(gpt2()), chat_template=TEMPLATE)
    return save_model(tmp_path_factory.mktemp("chat") / "m", GPT(CFG), tok)


@pytest.fixture(scope="module")
def alpaca_model(tmp_path_factory):
    """A tiny GPT-2-tokenizer model recorded as fine-tuned with alpaca prompts."""
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("alpaca") / "m", GPT(CFG), "gpt2", {"prompt_style": "alpaca"})


def spy_prompts(monkeypatch) -> list[list[int]]:
    """Replace the sampler under chat/sample by one that records each prompt and yields no token."""
    seen = []

    def fake_stream(model, prompts, cfg, **kwargs):
        seen.extend(list(p) for p in prompts)
        return iter(())

    monkeypatch.setattr(gptlab.chat, "stream", fake_stream)
    return seen


def test_sample_wraps_the_prompt_of_a_chat_model_unless_raw(chat_model, alpaca_model, monkeypatch):
    seen = spy_prompts(monkeypatch)
    tok = gpt2()
    question = "What is the capital of France?"
    for model, extra in ((chat_model, []), (chat_model, ["--raw"]), (alpaca_model, [])):
        assert main(["sample", "--model", str(model), "--prompt", question, "--temperature", "0", *extra]) == 0
    templated, raw, alpaca = (tok.decode(ids) for ids in seen)
    assert templated == render_chat(TEMPLATE, [{"role": "user", "content": question}]) == "<|endoftext|>user: " + question + "\n<|endoftext|>assistant:"
    assert raw == question
    assert alpaca == format_prompt(question, "", "alpaca")


def test_a_conversation_keeps_its_turns_and_drops_the_oldest_when_full(chat_model):
    _, tok = load_model(chat_model)
    conv = Conversation(tok, "chat", context_length=96, max_new_tokens=16, system="Be brief.")
    ids, dropped = conv.prompt("Hello")
    assert dropped == 0 and tok.decode(ids).startswith("<|endoftext|>system: Be brief.\n<|endoftext|>user: Hello\n")
    conv.add("Hello", " Hi there. ")
    ids, _ = conv.prompt("And you?")
    assert "<|endoftext|>assistant: Hi there.\n<|endoftext|>user: And you?\n" in tok.decode(ids)
    for i in range(6):
        conv.add(f"question {i} " * 3, f"answer {i} " * 3)
    ids, dropped = conv.prompt("last")
    assert dropped > 0 and len(ids) <= 96 - 16
    assert "question 5" in tok.decode(ids) and "Hello" not in tok.decode(ids)


def test_chat_loop_streams_answers_resets_and_stops_an_answer_on_ctrl_c(chat_model, monkeypatch):
    model, tok = load_model(chat_model)
    cfg = SamplingConfig(max_new_tokens=4, temperature=0.0)
    conv = Conversation(tok, "chat", CFG.context_length, 4)
    want = tok.decode(t for t in generate(model, [conv.prompt("Hello")[0]], cfg, tok.stop_tokens)[0] if t not in tok.stop_tokens)
    lines = iter(["Hello", "/reset", "Hello", "/exit", "never read"])
    out = io.StringIO()
    chat_loop(model, tok, conv, cfg, read=lambda _: next(lines), out=out)
    assert out.getvalue() == f"{want}\n(conversation cleared)\n{want}\n"  # the same answer after /reset: the history is gone
    assert len(conv.turns) == 1

    def interrupted(*args, **kwargs):
        yield torch.tensor([tok.encode_ordinary(" Paris")[0]]), torch.tensor([True])
        raise KeyboardInterrupt

    monkeypatch.setattr(gptlab.chat, "stream", interrupted)
    lines = iter(["Capital?", "/exit"])
    out = io.StringIO()
    chat_loop(model, tok, conv, cfg, read=lambda _: next(lines), out=out)
    assert out.getvalue() == " Paris [stopped]\n"  # back at the prompt, which then read /exit
    assert conv.turns[-1] == ("Capital?", "Paris")


def test_gptlab_chat_in_a_terminal_session_ends_cleanly_on_ctrl_d(chat_model):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "gptlab.cli", "chat", "--model", str(chat_model), "--temperature", "0", "--max-new-tokens", "4"]
    r = subprocess.run(cmd, input="Hello\nHow are you?\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"chat: {chat_model} (chat prompts); /reset starts over, /exit or Ctrl-D leaves")
    assert r.stdout.count("> ") == 3  # two questions answered, then end of input at the third prompt
    assert r.stderr == ""
