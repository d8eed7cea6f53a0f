"""GGUF out (issue 15.2): what export_gguf writes reads back through transformers' GGUF loader
and gptlab's own reader with the same logits (exact for f32) and the same tokenizer."""

import gguf
import pytest
import torch

from gptlab.checkpoint import load_model
from gptlab.config import GPTConfig
from gptlab.convert.gguf import gguf_to_gptlab, open_gguf, read_gguf_vocab
from gptlab.convert.gguf_export import export_gguf
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import SimpleTokenizer, gpt2
from tests.convert.test_hf_export import LLAMA, MIXED, QWEN2, random_model, small_bpe

transformers = pytest.importorskip("transformers")
TEXT = "Hello, world.<|im_start|>the lazy fox<|im_end|> 12345 ünï ✓"


def hf_logits(path, idx):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        return hf(idx).logits


def logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("family", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_llama_family_round_trips(tmp_path, family):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab + 3, context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=96, **family)
    model = random_model(config, seed=2)
    idx = torch.randint(0, tok.n_vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = logits(model, idx)
    path = export_gguf(model, tok, tmp_path / "m-f32.gguf")
    reader = open_gguf(path)
    arch = "qwen2" if family is QWEN2 else "llama"
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields[f"{arch}.attention.head_count_kv"].contents() == 2
    vocab = read_gguf_vocab(reader)
    assert vocab.chat_template == tok.chat_template and vocab.eos_id == tok.eot_token and vocab.tokens[-1] == f"[PAD{tok.n_vocab + 2}]"
    assert torch.equal(hf_logits(path, idx), ref)  # transformers un-permutes llama's Q/K rows
    back, back_tok = load_model(gguf_to_gptlab(path, tmp_path / "back"))
    assert back.config == config
    assert torch.equal(logits(back, idx), ref)
    assert back_tok.encode(TEXT) == tok.encode(TEXT) and back_tok.chat_template == tok.chat_template
    if arch == "llama":  # transformers rebuilds qwen2 files with Qwen2's own regex, not the file's pre-tokenizer
        auto = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
        assert auto(TEXT, add_special_tokens=False)["input_ids"] == tok.encode(TEXT)
    for dtype, bound in (("f16", 0.05), ("q8_0", 0.6)):
        quantised = export_gguf(model, tok, tmp_path / f"m-{dtype}.gguf", dtype)
        err = (logits(load_model(gguf_to_gptlab(quantised, tmp_path / dtype))[0], idx) - ref).abs().max().item()
        print(f"{arch} {dtype}: max abs logit error {err:.4f} (logit std {ref.std().item():.2f})")
        assert 0 < err < bound
        assert (hf_logits(quantised, idx) - ref).abs().max().item() < bound


@pytest.mark.slow  # ~25 s: transformers rebuilds the 50k-token tokenizer from the GGUF
def test_gpt2_round_trips_through_transformers(tmp_path):
    model = random_model(GPTConfig(context_length=1024, emb_dim=32, n_heads=2, n_layers=2), seed=3)  # transformers reads n_ctx as n_positions
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    path = export_gguf(model, gpt2(), tmp_path / "gpt2.gguf")
    reader = open_gguf(path)
    assert reader.fields["general.architecture"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert torch.allclose(hf_logits(path, idx), logits(model, idx), atol=1e-5, rtol=0)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert auto(MIXED, add_special_tokens=False)["input_ids"] == gpt2().encode(MIXED, allowed_special="all")


def test_q8_0_quantises_the_weights(tmp_path):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=32, emb_dim=64, n_heads=4, n_layers=1, mlp_hidden=64, **LLAMA)
    reader = open_gguf(export_gguf(GPT(config), tok, tmp_path / "q.gguf", "q8_0"))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0 and kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_unsupported_inputs_are_refused(tmp_path):
    simple = SimpleTokenizer.train(["a b c"])
    tiny = GPT(GPTConfig(vocab_size=simple.n_vocab, context_length=16, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(GptlabError, match="not a byte-level BPE"):
        export_gguf(tiny, simple, tmp_path / "x.gguf")
    with pytest.raises(GptlabError, match="dtype='q4' is unknown"):
        export_gguf(tiny, gpt2(), tmp_path / "x.gguf", "q4")
    mixed = GPT(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1, norm="rmsnorm"))
    with pytest.raises(GptlabError, match="is no GGUF architecture"):
        export_gguf(mixed, gpt2(), tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_gpt2_round_trips_through_our_reader(tmp_path):  # ~5 s: the reader parses 50k token strings
    model = random_model(GPTConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=2), seed=5)
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    back, back_tok = load_model(gguf_to_gptlab(export_gguf(model, gpt2(), tmp_path / "gpt2.gguf"), tmp_path / "back"))
    assert back.config == model.config and back_tok.name == "gpt2"
    assert torch.equal(logits(back, idx), logits(model, idx))
