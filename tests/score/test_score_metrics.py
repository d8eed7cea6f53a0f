import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gptlab.data.prompts import format_prompt
from gptlab.errors import GptlabError
from gptlab.score import metrics
from gptlab.score.metrics import (
    length_ratio,
    matched_length_f1,
    normalise,
    record_metrics,
    response_of,
    rouge_f1,
    spearman,
    squad_exact_match,
    squad_token_f1,
    squad_token_prf,
    summarise,
)
from gptlab.score.reference_loss import reference_loss
from gptlab.tokenizer import gpt2
from tests.helpers.models import tiny_gpt2
from tests.helpers.records import INSTRUCTIONS

RECORDS = INSTRUCTIONS[:3]


def test_normalise_is_squad_style():
    assert normalise("  The Cat, sat on a MAT!  ") == "cat sat on mat"
    assert normalise("An apple... and THE end.") == "apple and end"
    assert normalise("theory anathema") == "theory anathema"  # articles only as whole words


def test_squad_exact_match():
    assert squad_exact_match("The cat.", "cat") == 1.0
    assert squad_exact_match("a cat", "dog") == 0.0
    assert squad_exact_match("", "") == 1.0


def test_squad_token_f1_by_hand():
    # [cat, sat] vs [cat, sat, down]: P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8
    assert squad_token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated words count once per match: overlap 1, P = 1/3, R = 1/2, F1 = 0.4
    assert squad_token_f1("cat cat cat", "cat dog") == pytest.approx(0.4)
    assert squad_token_f1("dog", "cat") == 0.0
    assert squad_token_f1("", "") == 1.0
    assert squad_token_f1("", "cat") == 0.0 and squad_token_f1("the", "cat") == 0.0


PAIRS = [
    ("The cat sat on the mat.", "A cat sat on a mat"),
    ("the cat sat", "a cat sat down"),
    ("cat cat cat", "cat dog"),
    ("Paris.", "Paris"),
    ("", ""),
    ("", "cat"),
    ("The sum is 5!", "sum: 5"),
]


def test_squad_metrics_agree_with_the_maintained_squad_implementation():
    squad = pytest.importorskip("transformers.data.metrics.squad_metrics")
    for prediction, reference in PAIRS:
        assert squad_exact_match(prediction, reference) == squad.compute_exact(reference, prediction), (prediction, reference)
        assert squad_token_f1(prediction, reference) == pytest.approx(squad.compute_f1(reference, prediction)), (prediction, reference)


def test_rouge_on_the_standard_implementations_examples():
    # issue 15.5: "The cat sat on the mat." vs "A cat sat on a mat": ROUGE-L F = 4/6 (cat sat on mat of 6 words each)
    r = rouge_f1("The cat sat on the mat.", "A cat sat on a mat")
    assert r == {"rouge1_f1": pytest.approx(2 / 3), "rouge2_f1": pytest.approx(0.4), "rougeL_f1": pytest.approx(2 / 3)}
    assert round(r["rougeL_f1"], 3) == 0.667
    # rouge_score.rouge_scorer's own docstring example (target first there): rouge1 F 0.7059, rougeL F 0.5882
    r = rouge_f1("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
    assert r["rouge1_f1"] == pytest.approx(12 / 17) and r["rougeL_f1"] == pytest.approx(10 / 17)
    # order matters for ROUGE-L but not for token F1; no stemming: "kill" is not "killed"
    assert squad_token_f1("b c", "c b") == 1.0 and rouge_f1("b c", "c b")["rougeL_f1"] == pytest.approx(0.5)
    assert rouge_f1("police kill the gunman", "police killed the gunman")["rougeL_f1"] == pytest.approx(0.75)
    assert rouge_f1("", "cat") == {"rouge1_f1": 0.0, "rouge2_f1": 0.0, "rougeL_f1": 0.0}
    assert not hasattr(metrics, "lcs_length")  # the hand-written LCS is gone


def test_rouge_is_rouge_score_itself():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for prediction, reference in PAIRS:
        want = scorer.score(reference, prediction)
        assert rouge_f1(prediction, reference) == {f"{k}_f1": pytest.approx(v.fmeasure) for k, v in want.items()}


def test_record_metrics_and_response_keys():
    m = record_metrics({"output": "The sum is 5.", "response": "sum is 5"})
    assert m == {
        "squad_exact_match": 1.0,
        "squad_token_f1": 1.0,
        "squad_token_precision": 1.0,
        "squad_token_recall": 1.0,
        "rougeL_f1": pytest.approx(6 / 7),  # [sum is 5] vs [the sum is 5]: P 1, R 3/4
        "rouge1_f1": pytest.approx(6 / 7),
        "rouge2_f1": pytest.approx(0.8),  # 2 of 2 and 2 of 3 bigrams
        "response_words": 3,
        "response_chars": 8,
        "length_ratio": 1.0,  # SQuAD-normalised: "the" is dropped from the reference
        "empty": False,
    }
    blank = record_metrics({"output": "Paris", "model_response": "  \n"})
    assert blank["empty"] is True and blank["response_words"] == 0 and blank["response_chars"] == 3 and blank["squad_token_f1"] == 0.0
    assert response_of({"response": None}) == ""
    with pytest.raises(GptlabError, match="record 4 has no model response.*generate stage"):
        response_of({"output": "x"}, 4)


def test_precision_recall_and_length_ratio_by_hand():
    # reference [paris is capital of france] (5 words); response [capital is paris city of lights] (6 words)
    # overlap {capital, is, paris, of} = 4: P 4/6, R 4/5, F1 2PR/(P+R) = 8/11
    p, r, f1 = squad_token_prf("The capital is Paris, city of lights.", "Paris is the capital of France.")
    assert (p, r, f1) == (pytest.approx(4 / 6), pytest.approx(4 / 5), pytest.approx(8 / 11))
    assert squad_token_f1("The capital is Paris, city of lights.", "Paris is the capital of France.") == pytest.approx(8 / 11)
    assert squad_token_prf("", "") == (1.0, 1.0, 1.0) and squad_token_prf("", "Paris") == (0.0, 0.0, 0.0)
    assert length_ratio("one two three four", "one two") == 2.0 and math.isnan(length_ratio("x", "the"))


def test_a_model_that_wins_f1_only_by_being_shorter_does_not_win_at_matched_length():
    """Engine S answers with the reference's first words; engine L says the whole reference, then
    goes on. S wins token F1 (precision), but cut to the same length the answers are the same."""
    reference = "the capital of france is paris and it lies on the seine"
    short, long = (
        "capital of france is paris",
        reference + " which flows through the city into the english channel at le havre and then out to the open sea for many miles",
    )
    assert squad_token_f1(short, reference) > squad_token_f1(long, reference)
    f_short, f_long = matched_length_f1(short, long, reference)
    assert f_short == f_long == squad_token_f1(short, reference)
    # a shorter answer that is also *better* content keeps its lead at matched length
    wrong_long = "berlin is the capital of germany on the spree " * 3
    assert matched_length_f1(short, wrong_long, reference)[0] > matched_length_f1(short, wrong_long, reference)[1]


def _manual_loss(model, tok, record):
    prompt = tok.encode_ordinary(format_prompt(record["instruction"], record.get("input", "")))
    target = tok.encode_ordinary(record["output"]) + [tok.eot_token]
    ids = torch.tensor([prompt + target])
    logits, _ = model(ids[:, :-1])
    return F.cross_entropy(logits[0, len(prompt) - 1 :], ids[0, len(prompt) :]).item()


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2().eval()


def test_reference_loss_matches_teacher_forcing_by_hand(model):
    tok = gpt2()
    expected = [_manual_loss(model, tok, r) for r in RECORDS]
    with torch.no_grad():
        batched = reference_loss(model, tok, RECORDS, batch_size=3)
        single = reference_loss(model, tok, RECORDS, batch_size=1)
    assert batched == pytest.approx(expected, abs=1e-5)
    assert single == pytest.approx(expected, abs=1e-5)


def test_reference_loss_of_a_uniform_model_is_log_vocab():
    model = tiny_gpt2().eval()
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


def test_summarise_keeps_only_comparable_figures():
    df = pd.DataFrame(
        {
            "squad_exact_match": [1.0, 0.0],
            "squad_token_f1": [1.0, 0.5],
            "rougeL_f1": [0.5, 0.25],
            "rouge1_f1": [0.5, 0.5],
            "rouge2_f1": [0.0, 0.5],
            "response_words": [4, 0],
            "response_chars": [20, 0],
            "empty": [False, True],
            "loss": [1.0, 3.0],
            "judge_score": [80, None],
            "judge_error": ["", "judge http://x/api/chat failed 3 times, last: HTTP 500"],
        }
    )
    s = summarise(df)
    assert s == {
        "loss": 2.0,
        "squad_token_f1": 0.75,
        "rougeL_f1": 0.375,
        "response_words": 2.0,
        "empty_share": 0.5,
        "judge_mean": 80.0,
        "judge_scored": 1,
        "judge_unscored": 1,
        "judge_failed": 1,
    }
    assert summarise(pd.DataFrame({"judge_score": [None, None]}))["judge_mean"] is None


def test_spearman_without_scipy_matches_the_rank_formula():
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)); ranks [1,2,3,4,5] vs [2,1,4,3,5]: d^2 sum 4 -> 0.8
    assert spearman(pd.Series([10, 20, 30, 40, 50]), pd.Series([0.2, 0.1, 0.4, 0.3, 0.5])) == pytest.approx(0.8)
    # ties share their mean rank (scipy.stats.spearmanr's convention): [1,2,3,4] vs [4,1,2.5,2.5]
    a, b = [1, 2, 3, 4], [4, 1, 2.5, 2.5]
    ma, mb = sum(a) / 4, sum(b) / 4
    pearson = sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    assert spearman(pd.Series([85, 90, 95, 99]), pd.Series([1.0, 0.0, 0.5, 0.5])) == pytest.approx(pearson)
    assert spearman(pd.Series([1, 2, 3]), pd.Series([0.5, 0.5, 0.5])) is None  # constant: undefined
    df = pd.DataFrame({"squad_token_f1": [1.0, 0.0, 0.5, 0.5, 0.9], "judge_score": pd.array([85, 90, 95, 99, None], dtype="Int64")})
    assert summarise(df)["judge_f1_spearman"] == pytest.approx(pearson)


def test_reference_loss_keeps_record_order_and_float64_accuracy_whatever_the_batching(model):
    tok = gpt2()
    records = [RECORDS[2], RECORDS[0], RECORDS[1], RECORDS[0]]  # lengths out of order, a repeat
    wide = copy.deepcopy(model).double()
    expected = [_manual_loss(wide, tok, r) for r in records]
    with torch.no_grad():
        for batch_size in (1, 2, 4):
            assert reference_loss(model, tok, records, batch_size=batch_size) == pytest.approx(expected, abs=5e-6)
