"""Offline metrics of generated responses against reference outputs.

Text metrics under the names the literature uses: SQuAD's exact match and token F1
(``squad_exact_match``, ``squad_token_f1``: SQuAD-normalised word tokens, as the official
SQuAD v1.1 script) and ROUGE-1/2/L F1 (``rouge1_f1``, ``rouge2_f1``, ``rougeL_f1``) from
Google's maintained ``rouge-score`` package (its own tokenizer, no stemming: the default of
``rouge-score`` and of Hugging Face ``evaluate``'s ``rouge``). :func:`reference_loss` measures
how likely the model finds the reference output (nats/token); :func:`summarise` turns a
per-record table into the figures of ``metrics/score.json``.

A record is an Alpaca dict (``instruction``, ``input``, ``output``) plus the model's
``response`` (the LLMs-from-scratch key ``model_response`` is accepted too).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache

import pandas as pd
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from gptlab.data.instructions import collate
from gptlab.data.prompts import encode_prompt, format_example
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.progress import progress
from gptlab.tokenizer import Tokenizer

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


def squad_token_f1(prediction: str, reference: str) -> float:
    """Return the SQuAD token-level F1 (0..1) of the normalised word bags; 1.0 if both are empty."""
    pred, ref = normalise(prediction).split(), normalise(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


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

    Keys: ``squad_exact_match`` (0/1), ``squad_token_f1``, ``rougeL_f1``, ``rouge1_f1``,
    ``rouge2_f1`` (0..1), ``response_words`` (whitespace-separated words), ``response_chars``
    (characters) and ``empty`` (bool: the response is blank).
    """
    response, reference = response_of(record), str(record.get("output", ""))
    rouge = rouge_f1(response, reference)
    return {
        "squad_exact_match": squad_exact_match(response, reference),
        "squad_token_f1": squad_token_f1(response, reference),
        "rougeL_f1": rouge["rougeL_f1"],
        "rouge1_f1": rouge["rouge1_f1"],
        "rouge2_f1": rouge["rouge2_f1"],
        "response_words": len(response.split()),
        "response_chars": len(response),
        "empty": not response.strip(),
    }


def _reference_ids(record: dict, tokenizer: Tokenizer, style: str, context: int, index: int) -> tuple[list[int], int]:
    """Return ``(tokens, n_prompt)``: prompt + reference + end-of-text, cropped to ``context + 1``.

    Too long a sequence loses prompt tokens from the left first (one is always kept); a reference
    longer than the context itself is scored on its first ``context`` tokens.
    """
    if "instruction" not in record or "output" not in record:
        raise GptlabError(f"record {index} lacks 'instruction' or 'output' (keys {list(record)[:6]}); reference_loss needs Alpaca records")
    prompt_text, response = format_example({**record, "output": str(record["output"])}, style, tokenizer.chat_template)
    prompt = encode_prompt(tokenizer, prompt_text, style)
    target = tokenizer.encode_ordinary(response) + [tokenizer.eot_token]
    excess = len(prompt) + len(target) - (context + 1)
    if excess > 0:
        prompt = prompt[min(excess, len(prompt) - 1) :]
        target = target[: context + 1 - len(prompt)]
    return prompt + target, len(prompt)


@torch.inference_mode()
def reference_loss(model: GPT, tokenizer: Tokenizer, records: Sequence[dict], style: str = "alpaca", batch_size: int = 8) -> list[float]:
    """Return, per record, the mean cross-entropy (nats/token) of its reference output.

    Teacher forcing on the training text of ``style`` (prompt + response + <|endoftext|>): the
    prompt tokens are masked out, the reference tokens and the end-of-text token are scored.
    ``exp`` of a value is that record's perplexity. Records are batched ``batch_size`` at a
    time, in order of length, through :func:`gptlab.data.instructions.collate` (right-padded:
    padding only follows the scored tokens, so causal attention ignores it); the head runs on the
    scored positions only (its log-softmax over contiguous rows, which on the CPU is also closer
    to a float64 reference than that of strided (batch, vocab, seq) logits: ~1e-5 against ~1e-4).
    """
    if batch_size < 1:
        raise GptlabError(f"batch_size={batch_size} is impossible: must be >= 1")
    model.eval()
    device = next(model.parameters()).device
    context = model.config.context_length
    seqs = [_reference_ids(r, tokenizer, style, context, i) for i, r in enumerate(records)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # batches of similar lengths: little padding
    losses = [0.0] * len(seqs)
    for start in progress(range(0, len(seqs), batch_size), desc="reference loss", unit="batch"):
        batch = order[start : start + batch_size]
        inputs, targets = collate([seqs[i] for i in batch], pad_id=tokenizer.eot_token, mask_prompt=True)
        targets = targets.to(device)
        scored = targets != -100
        hidden = model.hidden_states(inputs.to(device))[scored]  # (scored tokens, emb_dim): no logits for prompts or padding
        nll = F.cross_entropy(model.head(hidden)[:, : model.config.vocab_size].float(), targets[scored], reduction="none")
        per_record = torch.zeros(len(batch), dtype=nll.dtype, device=device).index_add_(0, scored.nonzero()[:, 0], nll)
        for i, loss in zip(batch, (per_record / scored.sum(dim=1)).tolist()):
            losses[i] = loss
    return losses


# The per-engine means in metrics/score.json (the CSV has every column, also SQuAD exact match
# and ROUGE-1/2): few enough that `dvc exp show` of several engines stays readable.
MEAN_COLUMNS = ("squad_token_f1", "rougeL_f1", "response_words")


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
