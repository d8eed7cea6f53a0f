"""The sampler's min-p and penalties (issue 26), cross-checked against transformers' logits processors,
and per-row sampling (:class:`gptlab.sampling.Row`): a row gets the same tokens alone and in any batch."""

import dataclasses

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gptlab.config import GPTConfig
from gptlab.errors import GptlabError, ParamsError
from gptlab.model import GPT
from gptlab.sampling import Row, SamplingConfig, generate, penalize, sample_next, warp

CFG = GPTConfig(vocab_size=101, context_length=48, emb_dim=32, n_heads=4, n_layers=2)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [40, 41, 42, 43]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG).eval()
    with torch.no_grad():  # sharp distributions, as a trained model's
        for p in m.parameters():
            p.mul_(8.0)
    return m


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_and_warpers_match_transformers(penalty):
    torch.manual_seed(1)
    logits = torch.randn(3, 64) * 3
    ids = torch.randint(0, 64, (3, 12))
    cfg = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=penalty)
    ours = warp(penalize(logits, cfg, [(row.tolist(), 12) for row in ids]), cfg)
    chain = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]
    )
    theirs = chain(ids, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs)) and (~torch.isinf(ours)).sum(dim=1).min() >= 1
    kept = ~torch.isinf(ours)
    torch.testing.assert_close(ours[kept], theirs[kept])
    assert 0 < int(torch.isinf(theirs).sum()) < theirs.numel()  # the filters did cut something, not everything


def test_min_p_alone_matches_transformers():
    torch.manual_seed(2)
    logits = torch.randn(4, 200) * 2
    for min_p in (0.01, 0.2, 0.9):
        ours = warp(logits, SamplingConfig(temperature=1.0, min_p=min_p))
        theirs = MinPLogitsWarper(min_p)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))


def test_frequency_and_presence_penalties_count_the_answer_only_unless_a_window_is_given():
    logits = torch.zeros(1, 6)
    history = [([1, 1, 2, 3, 3, 3], 3)]  # prompt [1, 1, 2], answer [3, 3, 3]
    cfg = SamplingConfig(frequency_penalty=0.5, presence_penalty=0.25)
    assert penalize(logits, cfg, history).tolist() == [[0, 0, 0, -1.75, 0, 0]]  # OpenAI: 3 x 0.5 + 0.25, the prompt's 1 and 2 untouched
    window = dataclasses.replace(cfg, penalty_last_n=4)  # llama.cpp / Ollama: the last 4 tokens, prompt included: [2, 3, 3, 3]
    assert penalize(logits, window, history).tolist() == [[0, 0, -0.75, -1.75, 0, 0]]
    assert penalize(logits, dataclasses.replace(cfg, penalty_last_n=0), history).tolist() == [[0] * 6]
    rep = SamplingConfig(repetition_penalty=2.0)
    assert penalize(torch.tensor([[4.0, -4.0, 4.0, 4.0]]), rep, [([0, 1, 0], 3)]).tolist() == [[2.0, -8.0, 4.0, 4.0]]  # prompt counts


def test_greedy_with_a_repetition_penalty_stops_repeating(model):
    plain = generate(model, [[5, 6, 7]], SamplingConfig(30, 0.0))[0]
    penalized = generate(model, [[5, 6, 7]], SamplingConfig(30, 0.0, repetition_penalty=100.0))[0]
    assert len(set(plain)) < len(plain)  # the tiny model loops
    assert len(set(penalized)) == len(penalized) and not set(penalized) & {5, 6, 7}  # a huge penalty: never a token twice
    with pytest.raises(GptlabError, match="no history"):
        sample_next(torch.zeros(1, 5), SamplingConfig(frequency_penalty=1.0))


@pytest.mark.parametrize(
    "field,value",
    [("min_p", 1.5), ("min_p", -0.1), ("repetition_penalty", 0.0), ("frequency_penalty", 2.5), ("presence_penalty", -3.0), ("penalty_last_n", -1)],
)
def test_impossible_penalties_are_refused_naming_the_field(field, value):
    with pytest.raises(ParamsError, match=f"{field}={value} is impossible"):
        SamplingConfig(**{field: value})


def test_a_row_gets_the_same_tokens_alone_and_in_any_batch(model):
    rows = [
        SamplingConfig(12, 0.0),
        SamplingConfig(20, 0.9, top_k=30, seed=3, frequency_penalty=0.5),
        SamplingConfig(7, 1.2, top_p=0.9, min_p=0.05, seed=4, repetition_penalty=1.3),
    ]
    alone = [generate(model, [p], [Row(c)])[0] for p, c in zip(PROMPTS, rows)]
    together = generate(model, PROMPTS, [Row(c) for c in rows])
    assert together == alone and [len(t) for t in together] == [12, 20, 7]  # each row keeps its own budget
    assert generate(model, PROMPTS[::-1], [Row(c) for c in rows[::-1]]) == alone[::-1]
    assert alone[0] == generate(model, PROMPTS[:1], rows[0])[0]  # a greedy Row is the shared config's greedy


def test_a_resumed_row_continues_as_if_never_stopped(model):
    """``gptlab serve`` moves a request into a new batch as prompt + its answer so far, with its generator and ``answered``."""
    cfg = SamplingConfig(16, 0.8, seed=5, frequency_penalty=1.0, presence_penalty=0.5)
    whole = generate(model, [PROMPTS[0]], [Row(cfg)])[0]
    row = Row(dataclasses.replace(cfg, max_new_tokens=6))
    first = generate(model, [PROMPTS[0]], [row])[0]
    row.cfg, row.answered = dataclasses.replace(cfg, max_new_tokens=10), 6
    rest = generate(model, [PROMPTS[1], PROMPTS[0] + first], [Row(SamplingConfig(3, 0.0)), row])[1]
    assert first + rest == whole
