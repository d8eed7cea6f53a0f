"""litgpt out (issue 15.3): a Llama-family gptlab model exported with export_litgpt loads in
litgpt's own classes with the same logits and the same tokenizer."""

import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import gpt2
from tests.convert.test_hf_export import LLAMA, QWEN2, random_model, small_bpe

litgpt = pytest.importorskip("litgpt")

from gptlab.litgpt.checkpoint import export_litgpt  # noqa: E402
from gptlab.litgpt.runner import check_checkpoint_dir  # noqa: E402


@pytest.mark.parametrize("family,tie", [(LLAMA, False), (dict(QWEN2, tie_embeddings=True), True)], ids=["llama", "qwen2-tied"])
def test_litgpt_loads_the_export_with_identical_logits(tmp_path, family, tie):
    tok = small_bpe()
    config = GPTConfig(vocab_size=tok.n_vocab, context_length=64, emb_dim=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden=48, **family)
    model = random_model(config, seed=4)
    folder = export_litgpt(model, tok, tmp_path / "lit")
    assert check_checkpoint_dir(folder) == folder.resolve()
    lit_config = litgpt.Config.from_file(folder / "model_config.yaml")
    lit = litgpt.GPT(lit_config).eval()
    lit.load_state_dict(torch.load(folder / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, tok.n_vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(lit(idx), model(idx)[0], atol=1e-5, rtol=0)
    text = "Hello, world.<|im_start|>the lazy fox<|im_end|> 12345 ünï"
    assert litgpt.Tokenizer(folder).encode(text).tolist() == tok.encode(text)


def test_gpt2_config_is_refused(tmp_path):
    with pytest.raises(GptlabError, match="litgpt export takes the Llama family"):
        export_litgpt(GPT(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1)), gpt2(), tmp_path / "lit")
    assert not (tmp_path / "lit").exists()
