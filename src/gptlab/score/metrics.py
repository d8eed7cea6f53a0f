"""Offline metrics of generated responses against reference outputs.

Text metrics under the names the literature uses: SQuAD's exact match and token F1
(``squad_exact_match``, ``squad_token_f1``: SQuAD-normalised word tokens, as the official
SQuAD v1.1 script) and ROUGE-1/2/L F1 (``rouge1_f1``, ``rouge2_f1``, ``rougeL_f1``) from
Google's maintained ``rouge-score`` package (its own tokenizer, no stemming: the default of
``rouge-score`` and of Hugging Face ``evaluate``'s ``rouge``); beside F1 its precision and
recall, the response/reference length ratio, and :func:`matched_length_f1`, which compares two
engines' answers cut to the same length so that being shorter cannot win alone.
:func:`summarise` turns a per-record table into the figures of ``metrics/score.json`` (the
reference loss, a forward pass, is :mod:`gptlab.score.reference_loss`).

A record is an Alpaca dict (``instruction``, ``input``, ``output``) plus the model's
``response`` (the LLMs-from-scratch key ``model_response`` is accepted too).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import cache

import pandas as pd
from rouge_score import rouge_scorer

from gptlab.errors import GptlabError

RESPONSE_KEYS = ("response", "model_response")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def response_of(record: dict, index: int | None = None) -> str:
    """Return the model's response of ``record`` (key ``response`` or ``model_response``)."""
    for key in RESPONSE_KEYS:
        if key in record:
            value = record[key]
            return "" if value is None else str(value)
    where = f"record {index}" if index is not None else "a record"
    raise GptlabError(f"{where} has no model response (keys {list(record)[:6]}); expected one of {', '.join(RESPONSE_KEYS)}: run the generate stage first")


def normalise(text: str) -> str:
    """Return ``text`` SQuAD-normalised: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, reference: str) -> float:
    """Return SQuAD exact match: 1.0 when the normalised texts are equal, else 0.0."""
    return float(normalise(prediction) == normalise(reference))


def squad_token_counts(prediction: str, reference: str) -> tuple[int, int, int]:
    """Return ``(overlap, prediction words, reference words)`` of the SQuAD-normalised word bags
    (overlap: words in common, counted with multiplicity)."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    return sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref)


def squad_token_prf(prediction: str, reference: str) -> tuple[float, float, float]:
    """Return SQuAD token ``(precision, recall, f1)`` (each 0..1): precision = overlap / response
    words, recall = overlap / reference words. When either text is empty all three are 1.0 if
    both are, else 0.0 (the official script's rule for F1)."""
    overlap, n_pred, n_ref = squad_token_counts(prediction, reference)
    if not n_pred or not n_ref:
        same = float(n_pred == n_ref)
        return same, same, same
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return precision, recall, 2 * precision * recall / (precision + recall)


def squad_token_f1(prediction: str, reference: str) -> float:
    """Return the SQuAD token-level F1 (0..1) of the normalised word bags; 1.0 if both are empty."""
    return squad_token_prf(prediction, reference)[2]


def length_ratio(prediction: str, reference: str) -> float:
    """Return response words / reference words (SQuAD-normalised; NaN for an empty reference):
    1.0 is an answer as long as the reference, 2.0 twice as long."""
    n_pred, n_ref = len(normalise(prediction).split()), len(normalise(reference).split())
    return n_pred / n_ref if n_ref else float("nan")


def matched_length_f1(a: str, b: str, reference: str) -> tuple[float, float]:
    """Return the SQuAD token F1 of responses ``a`` and ``b`` against ``reference`` after cutting
    both to the first k normalised words, k the shorter answer's length.

    A length control for a paired comparison: token F1 rewards an answer for stopping early
    (precision) as much as for covering the reference (recall), so an engine can win F1 by
    answering shorter alone. At matched length neither answer is shorter, so the comparison
    is of what each says in its first k words: an answer that is the other's prefix scores the
    same, one that says something else in as many words scores differently.
    """
    words_a, words_b = normalise(a).split(), normalise(b).split()
    k = min(len(words_a), len(words_b))
    return squad_token_f1(" ".join(words_a[:k]), reference), squad_token_f1(" ".join(words_b[:k]), reference)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    """Return ``{"rouge1_f1", "rouge2_f1", "rougeL_f1"}`` (0..1) from ``rouge_score.RougeScorer``.

    ``rougeL`` is sentence-level ROUGE-L (longest common subsequence); an empty text scores 0.
    """
    scores = _rouge().score(reference, prediction)  # rouge-score takes (target, prediction)
    return {f"{name}_f1": float(scores[name].fmeasure) for name in ROUGE_TYPES}


def record_metrics(record: dict) -> dict:
    """Return the text metrics of one record.

    Keys: ``squad_exact_match`` (0/1), ``squad_token_f1``, ``squad_token_precision``,
    ``squad_token_recall``, ``rougeL_f1``, ``rouge1_f1``, ``rouge2_f1`` (0..1),
    ``response_words`` (whitespace-separated words), ``response_chars`` (characters),
    ``length_ratio`` (:func:`length_ratio`) and ``empty`` (bool: the response is blank).
    """
    response, reference = response_of(record), str(record.get("output", ""))
    rouge = rouge_f1(response, reference)
    precision, recall, f1 = squad_token_prf(response, reference)
    return {
        "squad_exact_match": squad_exact_match(response, reference),
        "squad_token_f1": f1,
        "squad_token_precision": precision,
        "squad_token_recall": recall,
        "rougeL_f1": rouge["rougeL_f1"],
        "rouge1_f1": rouge["rouge1_f1"],
        "rouge2_f1": rouge["rouge2_f1"],
        "response_words": len(response.split()),
        "response_chars": len(response),
        "length_ratio": length_ratio(response, reference),
        "empty": not response.strip(),
    }


# The per-engine means in metrics/score.json (the CSV has every column, also SQuAD exact match
# and ROUGE-1/2): few enough that `dvc exp show` of several engines stays readable.
MEAN_COLUMNS = ("squad_token_f1", "squad_token_precision", "squad_token_recall", "rougeL_f1", "response_words", "length_ratio")


def summarise(df: pd.DataFrame) -> dict:
    """Return the comparable figures of a per-record score table, as plain floats/ints for JSON.

    Uses the columns present: the means of :data:`MEAN_COLUMNS`; ``empty`` -> ``empty_share``
    (0..1); ``loss`` -> ``loss`` (mean nats/token; perplexity is its exp, so not repeated);
    ``judge_score`` -> ``judge_mean`` (mean over scored records, None if none),
    ``judge_scored`` and ``judge_unscored`` (counts; unscored includes failed), with
    ``judge_error`` -> ``judge_failed`` (records whose request failed) and, with 3+ scored
    records, ``judge_f1_spearman`` (:func:`spearman` of judge score and SQuAD token F1).
    """
    out: dict = {}
    if "loss" in df:
        out["loss"] = _mean(df["loss"])
    for col in MEAN_COLUMNS:
        if col in df:
            out[col] = _mean(df[col])
    if "empty" in df:
        out["empty_share"] = _mean(df["empty"].astype(float))
    if "judge_score" in df:
        scores = pd.to_numeric(df["judge_score"], errors="coerce").astype(float)
        out["judge_mean"] = _mean(scores)
        out["judge_scored"] = int(scores.notna().sum())
        out["judge_unscored"] = int(scores.isna().sum())
        if "judge_error" in df:
            out["judge_failed"] = int(_failed(df["judge_error"]).sum())
        if "squad_token_f1" in df and scores.notna().sum() >= 3:
            scored = scores.notna()
            out["judge_f1_spearman"] = spearman(scores[scored], df.loc[scored, "squad_token_f1"])
    return out


def spearman(a: pd.Series, b: pd.Series) -> float | None:
    """Return Spearman's rank correlation (-1..1) of two equally long series, or None if undefined.

    Pearson correlation of the average ranks (ties share their mean rank), which is what
    ``scipy.stats.spearmanr`` computes; None when either series is constant.
    """
    a_ranks = pd.Series(list(a), dtype=float).rank()
    b_ranks = pd.Series(list(b), dtype=float).rank()
    value = a_ranks.corr(b_ranks)
    return None if pd.isna(value) else float(value)


def _failed(errors: pd.Series) -> pd.Series:
    return errors.fillna("").astype(str).str.len() > 0


def _mean(series: pd.Series) -> float | None:
    value = series.mean()
    return None if pd.isna(value) else float(value)
