import pytest
import torch

from gptlab.checkpoint import load_model, save_model
from gptlab.config import PRESETS, GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import ENDOFTEXT, UNK, SimpleTokenizer

TINY = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2)


def test_presets_have_openai_shapes_and_124M_count():
    shapes = {name: (c.emb_dim, c.n_layers, c.n_heads) for name, c in PRESETS.items() if name.startswith("gpt2-")}
    assert shapes == {"gpt2-124M": (768, 12, 12), "gpt2-355M": (1024, 24, 16), "gpt2-774M": (1280, 36, 20), "gpt2-1558M": (1600, 48, 25)}
    assert all(PRESETS[n].context_length == 1024 and PRESETS[n].vocab_size == 50257 and PRESETS[n].qkv_bias for n in shapes)
    with torch.device("meta"):
        assert GPT(GPTConfig.preset("gpt2-124M")).num_parameters() == 124_439_808
        untied = GPT(GPTConfig.preset("gpt2-124M", tie_embeddings=False)).num_parameters()
    assert untied == 124_439_808 + 50257 * 768


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"emb_dim": 100, "n_heads": 3}, "n_heads=3 does not divide emb_dim=100"),
        ({"context_length": 0}, "context_length=0 is impossible"),
        ({"drop_rate": 1.0}, "drop_rate=1.0 is impossible"),
    ],
)
def test_impossible_configs_name_the_fields(kwargs, message):
    with pytest.raises(GptlabError, match=message):
        GPTConfig(**kwargs)
    with pytest.raises(GptlabError, match="unknown model preset 'gpt5'"):
        GPTConfig.preset("gpt5")
    with pytest.raises(GptlabError, match=r"unknown GPTConfig keys \['width'\]"):
        GPTConfig.from_dict({"width": 3})


def test_forward_shapes_loss_and_ignore_index():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 97, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 97) and loss is None
    targets = torch.randint(0, 97, (3, 16))
    _, loss = model(idx, targets)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, ref, atol=1e-6)
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5  # near-uniform at init
    masked = targets.clone()
    masked[:, 8:] = -100
    _, loss_masked = model(idx, masked)
    ref_masked = torch.nn.functional.cross_entropy(logits[:, :8].flatten(0, 1), targets[:, :8].flatten())
    assert torch.allclose(loss_masked, ref_masked, atol=1e-6)
    with pytest.raises(GptlabError, match="exceeds the context length 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    a = torch.randint(0, 97, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 97
    assert torch.allclose(model(a)[0][:, :10], model(b)[0][:, :10], atol=1e-6)
    assert not torch.allclose(model(a)[0][:, 10:], model(b)[0][:, 10:])


def test_tied_head_shares_the_embedding():
    model = GPT(TINY)
    assert model.head.weight is model.tok_emb.weight
    untied = GPT(GPTConfig(**{**TINY.to_dict(), "tie_embeddings": False}))
    assert untied.head.weight is not untied.tok_emb.weight


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(tmp_path, tie):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY.to_dict(), "tie_embeddings": tie}))
    save_model(tmp_path / "ckpt", model, SimpleTokenizer([f"w{i}" for i in range(95)] + [ENDOFTEXT, UNK]))  # a tokenizer that fits the 97 ids
    again, tok = load_model(tmp_path / "ckpt")
    idx = torch.randint(0, 97, (2, 16))
    assert torch.equal(model.eval()(idx)[0], again(idx)[0])
    assert again.config == model.config and tok.n_vocab == 97
    assert (again.head.weight is again.tok_emb.weight) == tie


def test_checkpoint_errors(tmp_path):
    with pytest.raises(GptlabError, match="config.json: not found"):
        load_model(tmp_path)
    model = GPT(TINY)
    save_model(tmp_path / "c", model)
    small = GPT(GPTConfig(**{**TINY.to_dict(), "emb_dim": 16}))
    save_model(tmp_path / "d", small)
    (tmp_path / "c" / "model.safetensors").write_bytes((tmp_path / "d" / "model.safetensors").read_bytes())
    with pytest.raises(GptlabError, match=r"tok_emb.weight has shape \(97, 16\), the config needs \(97, 32\)"):
        load_model(tmp_path / "c")
