"""A padded vocabulary (issue 25.1): the same true weights give the same loss, the same greedy
tokens and byte-identical exports with or without ``vocab_pad``; the pad rows are never
sampled, never in the loss, and our own checkpoint keeps them (with vocab_pad in config.json)."""

import dataclasses
import hashlib

import pytest
import torch

from gptlab.checkpoint import load_model, save_model
from gptlab.config import GPTConfig
from gptlab.convert.gguf_export import export_gguf
from gptlab.convert.hf import export_hf
from gptlab.errors import GptlabError
from gptlab.model import GPT, unpadded
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import gpt2

SMALL = GPTConfig(vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=2)


def twins(config: GPTConfig = SMALL, pad: int = 64) -> tuple[GPT, GPT]:
    """An unpadded model and a padded one holding the same true weights (pad rows: large values
    that would win every argmax and dominate the loss if they leaked)."""
    torch.manual_seed(0)
    plain = GPT(config)
    padded = GPT(dataclasses.replace(config, vocab_pad=pad))
    state = plain.state_dict()
    with torch.no_grad():
        for name, t in padded.state_dict().items():
            if name in ("tok_emb.weight", "head.weight"):
                t.fill_(5.0)
                t[: config.vocab_size] = state[name]
            else:
                t.copy_(state[name])
    return plain, padded


def test_padded_shapes_and_config_round_trip():
    c = dataclasses.replace(SMALL, vocab_pad=64)
    assert c.padded_vocab == 50304 and SMALL.padded_vocab == 50257
    assert GPT(c).head.weight.shape[0] == 50304
    assert "vocab_pad" not in SMALL.to_dict() and c.to_dict()["vocab_pad"] == 64
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(GptlabError, match="vocab_pad"):
        GPTConfig(vocab_pad=0)


@pytest.mark.parametrize("tie", [True, False])
def test_same_loss_logits_and_gradients(tie):
    plain, padded = twins(dataclasses.replace(SMALL, tie_embeddings=tie))
    idx, targets = torch.randint(0, 50257, (2, 32)), torch.randint(0, 50257, (2, 32))
    targets[0, :4] = -100
    for return_logits in (False, True):
        lp = plain(idx, targets, return_logits=return_logits)[1]
        lq = padded(idx, targets, return_logits=return_logits)[1]
        assert torch.allclose(lp, lq, atol=1e-6)
    lq.backward()
    if not tie:  # a pad row gets no gradient from the loss
        assert padded.head.weight.grad[50257:].abs().sum() == 0
    with torch.no_grad():
        lp_logits, lq_logits = plain(idx)[0], padded(idx)[0]
    assert lq_logits.shape == lp_logits.shape == (2, 32, 50257)
    assert torch.allclose(lp_logits, lq_logits, atol=1e-5)


def test_greedy_tokens_identical_and_pads_never_sampled():
    plain, padded = twins()
    prompt = [[1, 2, 3, 4]]
    greedy = SamplingConfig(12, temperature=0.0)
    assert generate(plain, prompt, greedy, []) == generate(padded, prompt, greedy, [])
    sampled = generate(padded, prompt, SamplingConfig(24, temperature=1.5, seed=0), [])
    assert all(t < 50257 for t in sampled[0])


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exports_write_the_true_vocabulary_byte_for_byte(tmp_path):
    plain, padded = twins()
    tok = gpt2()
    for name, model in (("plain", plain), ("padded", padded)):
        export_hf(model, tmp_path / name / "hf", tok)
        export_gguf(model, tok, tmp_path / name / "model.gguf")
    for rel in ("hf/model.safetensors", "hf/config.json", "model.gguf"):
        assert sha(tmp_path / "plain" / rel) == sha(tmp_path / "padded" / rel), rel
    assert unpadded(plain) is plain
    assert unpadded(padded).tok_emb.weight.shape[0] == 50257


def test_own_checkpoint_keeps_the_padding(tmp_path):
    _, padded = twins()
    save_model(tmp_path / "m", padded, "gpt2")
    back, _ = load_model(tmp_path / "m")
    assert back.config.vocab_pad == 64 and torch.equal(back.head.weight, padded.head.weight)
