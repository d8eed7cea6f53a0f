"""Offline metrics of generated responses against reference outputs.

Text metrics (exact match, token F1, ROUGE-L F1) compare SQuAD-normalised word tokens;
:func:`reference_loss` measures how likely the model finds the reference output (nats/token);
:func:`summarise` turns a per-record table into the numbers of ``metrics/score.json``.

A record is an Alpaca dict (``instruction``, ``input``, ``output``) plus the model's
``response`` (the LLMs-from-scratch key ``model_response`` is accepted too).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from gptlab.data.instructions import collate, format_prompt
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.progress import progress
from gptlab.tokenizer import Tokenizer

RESPONSE_KEYS = ("response", "model_response")
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


def _tokens(text: str) -> list[str]:
    return normalise(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """Return 1.0 when the normalised texts are equal, else 0.0."""
    return float(normalise(prediction) == normalise(reference))


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if n_pred == 0 or n_ref == 0:
        return float(n_pred == n_ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """Return the SQuAD token-level F1 (0..1) of the normalised word bags; 1.0 if both are empty."""
    pred, ref = _tokens(prediction), _tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f1(overlap, len(pred), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Return the length of the longest common subsequence of two token lists (O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Return ROUGE-L F1 (0..1): the LCS of the normalised word tokens over their lengths."""
    pred, ref = _tokens(prediction), _tokens(reference)
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def record_metrics(record: dict) -> dict:
    """Return the text metrics of one record.

    Keys: ``exact_match`` (0/1), ``token_f1`` and ``rouge_l_f1`` (0..1), ``response_words``
    (whitespace-separated words), ``response_chars`` (characters) and ``empty`` (bool: the
    response is blank).
    """
    response, reference = response_of(record), str(record.get("output", ""))
    return {
        "exact_match": exact_match(response, reference),
        "token_f1": token_f1(response, reference),
        "rouge_l_f1": rouge_l_f1(response, reference),
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
    prompt = tokenizer.encode_ordinary(format_prompt(record["instruction"], record.get("input", "") or "", style=style))
    target = tokenizer.encode_ordinary(str(record["output"])) + [tokenizer.eot_token]
    excess = len(prompt) + len(target) - (context + 1)
    if excess > 0:
        prompt = prompt[min(excess, len(prompt) - 1) :]
        target = target[: context + 1 - len(prompt)]
    return prompt + target, len(prompt)


@torch.inference_mode()
def reference_loss(model: GPT, tokenizer: Tokenizer, records: Sequence[dict], style: str = "alpaca", batch_size: int = 8) -> list[float]:
    """Return, per record, the mean cross-entropy (nats/token) of its reference output.

    Teacher forcing on ``format_prompt(instruction, input) + output + <|endoftext|>``: the
    prompt tokens are masked out, the reference tokens and the end-of-text token are scored.
    ``exp`` of a value is that record's perplexity. Records are batched ``batch_size`` at a
    time through :func:`gptlab.data.instructions.collate` (right-padded: padding only follows the
    scored tokens, so causal attention ignores it).
    """
    if batch_size < 1:
        raise GptlabError(f"batch_size={batch_size} is impossible: must be >= 1")
    model.eval()
    device = next(model.parameters()).device
    context = model.config.context_length
    seqs = [_reference_ids(r, tokenizer, style, context, i) for i, r in enumerate(records)]
    losses: list[float] = []
    for start in progress(range(0, len(seqs), batch_size), desc="reference loss", unit="batch"):
        inputs, targets = collate(seqs[start : start + batch_size], pad_id=tokenizer.eot_token, mask_prompt=True)
        logits, _ = model(inputs.to(device))
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets.to(device), ignore_index=-100, reduction="none")
        scored = (targets != -100).to(device)
        losses.extend((nll.sum(dim=1) / scored.sum(dim=1)).tolist())
    return losses


def summarise(df: pd.DataFrame) -> dict:
    """Return the means of a per-record score table, as plain floats/ints for JSON.

    Uses the columns present: ``exact_match``, ``token_f1``, ``rouge_l_f1``,
    ``response_words``, ``response_chars`` (means); ``empty`` -> ``empty_share`` (0..1);
    ``loss`` -> ``loss`` (mean nats/token) and ``perplexity`` (exp of that mean);
    ``judge_score`` -> ``judge_score`` (mean over scored records, None if none), ``judge_scored``
    and ``judge_unscored`` (counts). Always ``records``.
    """
    out: dict = {"records": int(len(df))}
    for col in ("exact_match", "token_f1", "rouge_l_f1", "response_words", "response_chars"):
        if col in df:
            out[col] = _mean(df[col])
    if "empty" in df:
        out["empty_share"] = _mean(df["empty"].astype(float))
    if "loss" in df:
        out["loss"] = _mean(df["loss"])
        out["perplexity"] = math.exp(out["loss"]) if out["loss"] is not None else None
    if "judge_score" in df:
        scores = pd.to_numeric(df["judge_score"], errors="coerce")
        out["judge_score"] = _mean(scores)
        out["judge_scored"] = int(scores.notna().sum())
        out["judge_unscored"] = int(scores.isna().sum())
    return out


def _mean(series: pd.Series) -> float | None:
    value = series.mean()
    return None if pd.isna(value) else float(value)
