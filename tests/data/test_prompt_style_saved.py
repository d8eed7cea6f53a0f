"""The prompt style a model was fine-tuned with travels in its folder: generate, score and serve prompt it that way."""

import json

import pytest
import torch
from fastapi.testclient import TestClient

import gptlab.generate
from gptlab.checkpoint import save_model
from gptlab.config import GPTConfig
from gptlab.convert.hf_tokenizer import to_hf_tokenizer
from gptlab.data.instructions import write_splits
from gptlab.data.prompts import format_prompt, model_prompt_style, render_chat
from gptlab.errors import GptlabError
from gptlab.generate import answer_file
from gptlab.model import GPT
from gptlab.params import FinetuneParams, GenerateParams, LoraParams
from gptlab.serve import build_app
from gptlab.serve.prompts import parse_messages
from gptlab.tokenizer import HFTokenizer, gpt2
from gptlab.train.finetune import finetune, publish_finetuned

CFG = GPTConfig(vocab_size=50257, context_length=96, emb_dim=32, n_heads=4, n_layers=2)
RECORDS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Give the opposite.", "input": "hot", "output": "cold"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
]
TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}"
CHAT = [{"role": "user", "content": "Name a colour."}]
MESSAGES = parse_messages(CHAT)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("style") / "splits"
    write_splits({"train": RECORDS, "val": RECORDS[:1], "test": RECORDS[1:]}, folder)
    return folder


@pytest.fixture(scope="module")
def book_model(tmp_path_factory, splits):
    """A tiny GPT-2 model (no chat template) fine-tuned for two steps with prompt_style book, published."""
    root = tmp_path_factory.mktemp("book")
    torch.manual_seed(0)
    save_model(root / "base", GPT(CFG))
    p = FinetuneParams(
        prompt_style="book", max_steps=2, eval_interval=2, batch_size=2, device="cpu", precision="fp32",
        checkpoint_dir=str(root / "ckpt"), lora=LoraParams(r=2, alpha=4, dropout=0.0),
    )  # fmt: skip
    result = finetune(root / "base", splits / "train.json", splits / "val.json", p, seed=0)
    return publish_finetuned(result, root / "finetuned")


def templated_model(folder, style: str | None):
    """Save a tiny model whose tokenizer carries a chat template, recording ``style`` (None: none)."""
    torch.manual_seed(0)
    tok = HFTokenizer(to_hf_tokenizer(gpt2()), chat_template=TEMPLATE)
    return save_model(folder, GPT(CFG), tok, {} if style is None else {"prompt_style": style})


def generated_prompts(monkeypatch, model_dir, splits, tmp_path) -> list[str]:
    """Run generate on the test split; return the prompts it fed the model, decoded."""
    seen = []

    def spy(model, prompts, cfg, **kwargs):
        seen.extend(prompts)
        return [[] for _ in prompts]

    monkeypatch.setattr(gptlab.generate, "generate", spy)
    answer_file(model_dir, splits / "test.json", tmp_path / "responses.json", GenerateParams(max_new_tokens=2, device="cpu"), seed=0)
    tok = gpt2()
    return sorted(tok.decode(ids) for ids in seen)


def test_finetuning_records_the_prompt_style_in_the_model_folder(book_model):
    assert json.loads((book_model / "config.json").read_text())["prompt_style"] == "book"
    assert model_prompt_style(book_model) == "book"


def test_a_book_model_is_served_and_generated_with_book_prompts(book_model, splits, tmp_path, monkeypatch):
    app = build_app(book_model, model_name="tiny")
    book = format_prompt("Name a colour.", style="book")
    assert app.state.engine.chat_prompt(MESSAGES).text == book
    with TestClient(app, base_url="http://127.0.0.1") as client:
        show = client.post("/api/show", json={"model": "tiny"}).json()
        assert show["template"] == format_prompt("{{ .Prompt }}", style="book")
        reply = client.post("/api/chat", json={"model": "tiny", "messages": CHAT, "stream": False, "options": {"num_predict": 1}}).json()
        assert reply["prompt_eval_count"] == len(gpt2().encode_ordinary(book)) != len(gpt2().encode_ordinary(format_prompt("Name a colour.")))
    expected = sorted(format_prompt(r["instruction"], r["input"], style="book") for r in RECORDS[1:])
    assert generated_prompts(monkeypatch, book_model, splits, tmp_path) == expected


def test_a_chat_model_is_served_and_generated_with_its_chat_template(tmp_path, splits, monkeypatch):
    model_dir = templated_model(tmp_path / "chat", "chat")
    prompt = build_app(model_dir).state.engine.chat_prompt(MESSAGES)
    assert prompt.special_tokens and prompt.text == render_chat(TEMPLATE, CHAT) == "<|endoftext|>user: Name a colour.\n<|endoftext|>assistant:"
    expected = sorted(format_prompt(r["instruction"], r["input"], "chat", TEMPLATE) for r in RECORDS[1:])
    assert expected[0] == "<|endoftext|>user: Give the opposite.\n\nhot\n<|endoftext|>assistant:"
    assert generated_prompts(monkeypatch, model_dir, splits, tmp_path) == expected


def test_the_recorded_style_wins_over_the_template_and_its_absence_keeps_todays_default(tmp_path):
    alpaca = templated_model(tmp_path / "alpaca", "alpaca")
    assert build_app(alpaca).state.engine.chat_prompt(MESSAGES).text == format_prompt("Name a colour.")
    unrecorded = templated_model(tmp_path / "none", None)
    assert model_prompt_style(unrecorded) is None and model_prompt_style(unrecorded, "alpaca") == "alpaca"
    assert build_app(unrecorded).state.engine.chat_prompt(MESSAGES).text == render_chat(TEMPLATE, CHAT)


def test_a_chat_style_without_a_template_or_an_unknown_style_is_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    plain = save_model(tmp_path / "plain", GPT(CFG), "gpt2", {"prompt_style": "chat"})
    with pytest.raises(GptlabError, match="prompt_style chat needs a tokenizer with a chat template"):
        build_app(plain)
    odd = save_model(tmp_path / "odd", GPT(CFG), "gpt2", {"prompt_style": "chatml"})
    with pytest.raises(GptlabError, match=r"config.json: prompt_style 'chatml' is unknown"):
        model_prompt_style(odd)


def test_the_reference_loss_is_taken_in_the_style_given(book_model, tmp_path, monkeypatch):
    import gptlab.score.reference_loss
    from gptlab.score.reference_loss import reference_loss_file

    (tmp_path / "test.json").write_text(json.dumps([RECORDS[0]]))
    seen = []
    monkeypatch.setattr(gptlab.score.reference_loss, "reference_loss", lambda model, tok, records, style, batch: seen.append(style) or [0.0] * len(records))
    reference_loss_file(book_model, tmp_path / "test.json", tmp_path / "loss.json", model_prompt_style(book_model, "alpaca"))
    reference_loss_file(book_model, tmp_path / "test.json", tmp_path / "loss.json", "alpaca")
    assert seen == ["book", "alpaca"]
    assert json.loads((tmp_path / "loss.json").read_text())["prompt_style"] == "alpaca"
