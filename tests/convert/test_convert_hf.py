"""gptlab against the reference GPT-2 of Hugging Face transformers (random weights, no download)."""

import json

import pytest
import torch

from gptlab.convert.hf import config_from_hf, export_hf, from_hf_state_dict, gpt_from_hf, load_hf_dir
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate

transformers = pytest.importorskip("transformers")


def hf_model(tie=True, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=211, n_positions=48, n_embd=64, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, initializer_range=0.2, tie_word_embeddings=tie, bos_token_id=210, eos_token_id=210,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def ours_from(hf) -> GPT:
    return gpt_from_hf(hf.state_dict(), hf.config.to_dict()).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers(tie):
    hf = hf_model(tie)
    ours = ours_from(hf)
    torch.manual_seed(1)
    for batch, seq in [(1, 1), (3, 17), (2, 48)]:
        idx = torch.randint(0, 211, (batch, seq))
        with torch.no_grad():
            ref = hf(idx).logits
            got, _ = ours(idx)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


def test_loss_matches_transformers():
    hf = hf_model()
    ours = ours_from(hf)
    idx = torch.randint(0, 211, (2, 20))
    with torch.no_grad():
        ref = hf(idx, labels=idx).loss
        _, loss = ours(idx[:, :-1], idx[:, 1:])
    assert abs(ref.item() - loss.item()) < 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_export_reloads_in_transformers_with_identical_logits(tmp_path, tie):
    ours = ours_from(hf_model(tie, seed=3))
    export_hf(ours, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 211, (2, 30))
    with torch.no_grad():
        assert torch.allclose(again(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)
    # and gptlab reads the exported folder back (the weights; load_any would refuse GPT-2's 50,257-id tokenizer on 211 ids)
    back = load_hf_dir(tmp_path / "hf")
    assert torch.equal(back(idx)[0], ours(idx)[0])


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    hf = hf_model()
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # the legacy layout, a zip of tensors
    (tmp_path / "bin" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ours = load_hf_dir(tmp_path / "bin")
    idx = torch.randint(0, 211, (1, 10))
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], hf(idx).logits, atol=1e-5)


def test_greedy_generation_matches_transformers_generate():
    hf = hf_model()
    ours = ours_from(hf)
    prompts = [[5, 9, 13, 2, 77], [100, 3, 8, 1, 150]]
    for p in prompts:
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=25,
                          do_sample=False, pad_token_id=210, eos_token_id=None)[0, len(p):].tolist()  # fmt: skip
        got = generate(ours, [p], SamplingConfig(max_new_tokens=25, temperature=0))[0]
        assert got == ref
    assert len(set(ref)) > 3


def test_batched_left_padded_generation_matches_transformers():
    hf = hf_model(seed=5)
    ours = ours_from(hf)
    prompts = [[5, 9, 13, 2, 77, 31, 4], [100, 3], [7, 7, 8]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, pad_token_id=0, eos_token_id=None)[:, width:]
    got = generate(ours, prompts, SamplingConfig(max_new_tokens=15, temperature=0))
    assert got == ref.tolist()


def test_missing_tensor_is_named():
    hf = hf_model()
    state = hf.state_dict()
    del state["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(GptlabError, match=r"missing tensor h.1.mlp.c_fc.weight"):
        from_hf_state_dict(state, config_from_hf(hf.config.to_dict()))
