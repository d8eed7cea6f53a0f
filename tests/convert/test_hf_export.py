"""Complete Hugging Face folders (issue 15.1): AutoTokenizer, pipeline("text-generation") and
gptlab itself read what export_hf writes, for GPT-2 and the Llama family."""

import json
import time

import pytest
import torch

from gptlab.checkpoint import model_state
from gptlab.config import GPTConfig
from gptlab.convert.hf import export_hf
from gptlab.convert.load_any import load_any
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import HFTokenizer, SimpleTokenizer, gpt2

transformers = pytest.importorskip("transformers")

MIXED = "Hello, world.  Ünïcødé ✓ 日本語<|endoftext|> tabs\tand\n\nnewlines   it's 123456 x  "
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA = dict(norm="rmsnorm", positions="rope", mlp="swiglu", qkv_bias=False, proj_bias=False, mlp_bias=False, tie_embeddings=False)
QWEN2 = dict(LLAMA, qkv_bias=True, norm_eps=1e-6, rope_base=1e6)


def small_bpe() -> HFTokenizer:
    """A byte-level BPE trained with the tokenizers library on a few sentences (ChatML specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "Hello, world. Hello there!", "numbers 12345 and ünïcødé"] * 20, trainer)
    return HFTokenizer(tok, CHATML, eot_token=tok.token_to_id("<|im_end|>"), stop_tokens=[tok.token_to_id("<|endoftext|>")])


def random_model(config: GPTConfig, seed: int = 0, scale: float = 0.2) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than the init, so greedy decoding wanders
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def pipeline_greedy(folder, prompt: str, n: int) -> str:
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    out = pipe(prompt, max_new_tokens=n, do_sample=False, return_full_text=False, clean_up_tokenization_spaces=False)
    return out[0]["generated_text"]


def ours_greedy(model, tokenizer, prompt: str, n: int) -> str:
    stops = getattr(tokenizer, "stop_tokens", [tokenizer.eot_token])
    ids = generate(model, [tokenizer.encode(prompt, allowed_special="all")], SamplingConfig(max_new_tokens=n, temperature=0), stop_tokens=stops)[0]
    return tokenizer.decode(ids)


def test_gpt2_folder_is_complete_for_transformers(tmp_path):
    tok = gpt2()
    model = random_model(GPTConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=2))
    folder = export_hf(model, tmp_path / "hf", tok)
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "vocab.json", "merges.txt"} <= {p.name for p in folder.iterdir()}
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert len(auto) == 50257
    assert auto("Hello, world.")["input_ids"] == [15496, 11, 995, 13]
    assert auto(MIXED)["input_ids"] == tok.encode(MIXED, allowed_special="all")
    assert auto.decode(tok.encode(MIXED, allowed_special="all")) == MIXED
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 50256
    prompt = "The meaning of life is"
    ours = ours_greedy(model, tok, prompt, 12)
    assert ours and pipeline_greedy(folder, prompt, 12) == ours
    back, back_tok = load_any(folder)
    assert back_tok.name == "gpt2"
    assert all(torch.equal(v, model_state(model)[k]) for k, v in model_state(back).items())


@pytest.mark.parametrize("family", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_llama_family_folder_is_complete_for_transformers(tmp_path, family):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=48, **family)
    model = random_model(config, seed=1)
    folder = export_hf(model, tmp_path / "hf", tok)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    text = "Hello, world.<|im_start|>the lazy fox<|im_end|> 12345 ünï ✓"
    assert auto(text)["input_ids"] == tok.encode(text, allowed_special="all")
    chat = auto.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tok.stop_tokens
    prompt = "the quick brown"
    ours = ours_greedy(model, tok, prompt, 10)
    assert ours and pipeline_greedy(folder, prompt, 10) == ours
    back, back_tok = load_any(f"hf:{folder}")
    assert isinstance(back_tok, HFTokenizer) and back_tok.chat_template == CHATML and back_tok.stop_tokens == tok.stop_tokens
    assert back_tok.encode(text) == tok.encode(text)
    assert back.config == model.config
    assert all(torch.equal(v, model_state(model)[k]) for k, v in model_state(back).items())


def test_simple_tokenizer_exports_as_word_level(tmp_path):
    tok = SimpleTokenizer.train(["Hello, world. hello there, world's end 12"])
    folder = export_hf(random_model(GPTConfig(vocab_size=tok.n_vocab, context_length=16, emb_dim=16, n_heads=2, n_layers=1)), tmp_path / "hf", tok)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    text = "Hello, world.<|endoftext|> unseen  hello 12"
    assert auto(text)["input_ids"] == tok.encode(text)
    assert auto.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    _, back_tok = load_any(folder)
    assert back_tok.encode(text) == tok.encode(text)


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    with pytest.raises(
        GptlabError,
        match=r"hf: the tokenizer's ids go up to 50256 \(50,257 ids\) but the model's vocab_size is 64; export with the tokenizer the model was trained with",
    ):
        export_hf(GPT(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1)), tmp_path / "hf", "gpt2")


def test_llama_folder_header_checked_before_building(tmp_path):
    config = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2, mlp_hidden=24, **LLAMA)
    folder = export_hf(GPT(config), tmp_path / "hf")
    data = json.loads((folder / "config.json").read_text())
    data["num_hidden_layers"] = 10**6
    (folder / "config.json").write_text(json.dumps(data))
    start = time.perf_counter()
    with pytest.raises(GptlabError, match=r"config.json: num_hidden_layers=1000000 but .* holds 2 layers"):
        load_any(folder)
    assert time.perf_counter() - start < 2
    data["num_hidden_layers"], data["intermediate_size"] = 2, 30
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(GptlabError, match="mlp.fc.weight has shape"):
        load_any(folder)
    with pytest.raises(GptlabError, match="tokenizer.json: not found"):
        data["intermediate_size"] = 24
        (folder / "config.json").write_text(json.dumps(data))
        load_any(folder)


def test_export_model_dispatches_by_format(tmp_path):
    from gptlab.convert.export import export_model

    tok = small_bpe()
    model = random_model(GPTConfig(vocab_size=tok.n_vocab, context_length=16, emb_dim=16, n_heads=2, n_layers=1, mlp_hidden=24, **LLAMA))
    assert export_model(model, tok, tmp_path / "g", "gguf", "f16") == tmp_path / "g" / "model.gguf"
    assert (export_model(model, tok, tmp_path / "h", "hf") / "tokenizer.json").is_file()
    with pytest.raises(GptlabError, match="export format 'onnx' is unknown; choose among hf, gguf"):
        export_model(model, tok, tmp_path / "o", "onnx")
