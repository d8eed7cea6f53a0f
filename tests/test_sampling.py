import pytest
import torch

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.sampling import SamplingConfig, generate, sample_next, stream

CFG = GPTConfig(vocab_size=101, context_length=24, emb_dim=32, n_heads=4, n_layers=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so greedy paths vary
        for p in m.parameters():
            p.mul_(8.0)
    return m


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43]]


def test_cached_uncached_and_batched_greedy_agree_past_the_context(model):
    greedy = SamplingConfig(max_new_tokens=40, temperature=0)  # 7 + 40 > context 24: the window slides
    cached = generate(model, PROMPTS, greedy)
    assert cached == generate(model, PROMPTS, greedy, use_cache=False)
    assert cached == [generate(model, [p], greedy)[0] for p in PROMPTS]
    assert all(len(c) == 40 for c in cached)
    assert len({tuple(c) for c in cached}) == 3 and len(set(cached[0])) > 3


def test_cache_feeds_one_position_per_step(model, monkeypatch):
    seen = []
    original = GPT.forward

    def spy(self, idx, *args, **kwargs):
        seen.append(idx.shape[1])
        return original(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", spy)
    generate(model, [[1, 2, 3, 4, 5]], SamplingConfig(max_new_tokens=10, temperature=0))
    assert seen == [5] + [1] * 9
    seen.clear()
    generate(model, [[1, 2, 3, 4, 5]], SamplingConfig(max_new_tokens=10, temperature=0), use_cache=False)
    assert seen == list(range(5, 15))


def test_stop_tokens_end_each_row_separately(model):
    greedy = SamplingConfig(max_new_tokens=30, temperature=0)
    full = generate(model, PROMPTS, greedy)
    stop = full[0][5]
    out = generate(model, PROMPTS, greedy, stop_tokens=[stop])
    for row, whole in zip(out, full):
        cut = whole.index(stop) if stop in whole else len(whole)
        assert row == whole[:cut]
    steps = list(stream(model, [PROMPTS[0]], greedy, stop_tokens=[stop]))
    assert len(steps) == full[0].index(stop) + 1  # the loop ends once every row stopped


def test_seeded_sampling_is_reproducible_and_varies_with_the_seed(model):
    a = generate(model, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=1))
    assert a == generate(model, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=1))
    assert a != generate(model, PROMPTS, SamplingConfig(max_new_tokens=20, temperature=1.0, seed=2))


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), g)
    assert set(top2.tolist()) == {3, 4}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: top_p 0.8 keeps {4, 3}
    assert probs[4] < 0.8 < probs[4] + probs[3]
    nucleus = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.8), g)
    assert set(nucleus.tolist()) == {3, 4}
    share = (nucleus == 4).float().mean().item()
    assert abs(share - probs[4] / (probs[4] + probs[3])) < 0.04
    assert set(sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.5), g).tolist()) == {4}
    assert sample_next(logits[:1], SamplingConfig(temperature=0)).tolist() == [4]


def test_bad_sampling_settings_and_prompts(model):
    for kwargs, message in [({"temperature": -1}, "temperature=-1"), ({"top_k": 0}, "top_k=0"), ({"top_p": 1.5}, "top_p=1.5")]:
        with pytest.raises(GptlabError, match=message):
            SamplingConfig(**kwargs)
    with pytest.raises(GptlabError, match="every prompt needs at least one token"):
        generate(model, [[1], []], SamplingConfig())
