import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gptlab.data.instructions import format_prompt
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.score.metrics import (
    exact_match,
    lcs_length,
    normalise,
    record_metrics,
    reference_loss,
    response_of,
    rouge_l_f1,
    summarise,
    token_f1,
)
from gptlab.tokenizer import gpt2

CFG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)
RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."},
    {"instruction": "Say hi.", "output": "Hi there, friend!"},
]


def test_normalise_is_squad_style():
    assert normalise("  The Cat, sat on a MAT!  ") == "cat sat on mat"
    assert normalise("An apple... and THE end.") == "apple and end"
    assert normalise("theory anathema") == "theory anathema"  # articles only as whole words


def test_exact_match():
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("a cat", "dog") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_by_hand():
    # [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated words count once per match: overlap 1, P = 1/3, R = 1/2, F1 = 0.4
    assert token_f1("cat cat cat", "cat dog") == pytest.approx(0.4)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "cat") == 0.0 and token_f1("the", "cat") == 0.0


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0
    # [police, kill, gunman] vs [police, killed, gunman]: LCS 2, P = R = 2/3
    assert rouge_l_f1("police kill the gunman", "police killed the gunman") == pytest.approx(2 / 3)
    # [gunman, kill, police] vs [police, killed, gunman]: LCS 1, P = R = 1/3
    assert rouge_l_f1("the gunman kill police", "police killed the gunman") == pytest.approx(1 / 3)
    # order matters for ROUGE-L but not for token F1
    assert token_f1("b c", "c b") == 1.0 and rouge_l_f1("b c", "c b") == pytest.approx(0.5)
    # [x, y, z] vs [x, z]: LCS 2, P = 2/3, R = 1, F = 0.8
    assert rouge_l_f1("x y z", "x z") == pytest.approx(0.8)


def test_record_metrics_and_response_keys():
    m = record_metrics({"output": "The sum is 5.", "response": "sum is 5"})
    assert m == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l_f1": 1.0, "response_words": 3, "response_chars": 8, "empty": False}
    blank = record_metrics({"output": "Paris", "model_response": "  \n"})
    assert blank["empty"] is True and blank["response_words"] == 0 and blank["response_chars"] == 3 and blank["token_f1"] == 0.0
    assert response_of({"response": None}) == ""
    with pytest.raises(GptlabError, match="record 4 has no model response.*generate stage"):
        response_of({"output": "x"}, 4)


def _manual_loss(model, tok, record):
    prompt = tok.encode_ordinary(format_prompt(record["instruction"], record.get("input", "")))
    target = tok.encode_ordinary(record["output"]) + [tok.eot_token]
    ids = torch.tensor([prompt + target])
    logits, _ = model(ids[:, :-1])
    return F.cross_entropy(logits[0, len(prompt) - 1 :], ids[0, len(prompt) :]).item()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_reference_loss_matches_teacher_forcing_by_hand(model):
    tok = gpt2()
    expected = [_manual_loss(model, tok, r) for r in RECORDS]
    with torch.no_grad():
        batched = reference_loss(model, tok, RECORDS, batch_size=3)
        single = reference_loss(model, tok, RECORDS, batch_size=1)
    assert batched == pytest.approx(expected, abs=1e-5)
    assert single == pytest.approx(expected, abs=1e-5)


def test_reference_loss_of_a_uniform_model_is_log_vocab():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    with torch.no_grad():
        model.tok_emb.weight.zero_()  # tied head: every logit is 0, p = 1/50257 per token
    losses = reference_loss(model, gpt2(), RECORDS, batch_size=2)
    assert losses == pytest.approx([math.log(50257)] * 3, abs=1e-4)


def test_reference_loss_crops_to_the_context(model):
    long = {"instruction": "word " * 100, "input": "", "output": "a reply " * 50}
    (loss,) = reference_loss(model, gpt2(), [long])
    assert math.isfinite(loss) and loss > 0
    with pytest.raises(GptlabError, match="record 0 lacks"):
        reference_loss(model, gpt2(), [{"instruction": "x"}])


def test_summarise_means_empty_share_perplexity_and_judge_counts():
    df = pd.DataFrame(
        {
            "exact_match": [1.0, 0.0],
            "token_f1": [1.0, 0.5],
            "rouge_l_f1": [0.5, 0.25],
            "response_words": [4, 0],
            "response_chars": [20, 0],
            "empty": [False, True],
            "loss": [1.0, 3.0],
            "judge_score": [80, None],
        }
    )
    s = summarise(df)
    assert s["records"] == 2 and s["exact_match"] == 0.5 and s["token_f1"] == 0.75 and s["rouge_l_f1"] == 0.375
    assert s["response_words"] == 2.0 and s["response_chars"] == 10.0 and s["empty_share"] == 0.5
    assert s["loss"] == 2.0 and s["perplexity"] == pytest.approx(math.exp(2.0))
    assert s["judge_score"] == 80.0 and s["judge_scored"] == 1 and s["judge_unscored"] == 1
    assert summarise(pd.DataFrame({"judge_score": [None, None]}))["judge_score"] is None
