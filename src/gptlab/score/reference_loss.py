"""The reference loss: how likely a model finds each test record's reference output (nats/token).

A forward pass per record, so it is its own pipeline stage per model (``reference_loss`` for the
fine-tuned model, ``reference_loss_base`` for the base), cached by DVC apart from generation: a
new ``generate`` param or a new fine-tune reruns only what it changes. :func:`reference_loss_file`
writes the per-record losses the score stage reads
(:func:`gptlab.score.report.read_reference_losses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from gptlab.convert.load_any import load_any
from gptlab.data.instructions import collate, load_records
from gptlab.data.prompts import encode_prompt, format_example
from gptlab.errors import GptlabError
from gptlab.io import write_json
from gptlab.model import GPT
from gptlab.progress import progress
from gptlab.tokenizer import Tokenizer

UNIT = "nats/token"


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


def reference_loss_file(model_dir: str | Path, test_path: str | Path, out_path: str | Path, style: str, batch_size: int = 8) -> list[float]:
    """Score every record of ``test_path`` with the model in ``model_dir`` (:func:`reference_loss`
    in prompt ``style``); write ``{"model", "prompt_style", "unit", "records", "loss": [one per
    record, in file order]}`` to ``out_path`` (JSON) and return the losses (nats/token)."""
    model, tok = load_any(model_dir)
    losses = reference_loss(model, tok, load_records(test_path), style, batch_size)
    write_json(out_path, {"model": str(model_dir), "prompt_style": style, "unit": UNIT, "records": len(losses), "loss": [round(x, 6) for x in losses]})
    return losses
