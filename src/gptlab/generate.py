"""Responses of a model to held-out instructions (the generate stage).

Prompts are formatted in the fine-tuning prompt style, sampled with the one sampling function
(:func:`gptlab.sampling.generate`) in batches (sorted by length so little padding is fed),
stopped at end-of-text, and returned without the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.data.instructions import format_prompt
from gptlab.model import GPT
from gptlab.params import GenerateParams
from gptlab.progress import progress
from gptlab.sampling import SamplingConfig, generate
from gptlab.tokenizer import Tokenizer


def sampling_config(p: GenerateParams, seed: int) -> SamplingConfig:
    """The SamplingConfig of the ``generate`` params (``seed`` null: the global seed)."""
    return SamplingConfig(p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed if p.seed is not None else seed)


def respond(model: GPT, tokenizer: Tokenizer, records: Sequence[dict], cfg: SamplingConfig, batch_size: int = 16, style: str = "alpaca") -> list[dict]:
    """Return one record per input record: ``instruction``, ``input``, ``output`` (the
    reference) and ``response`` (the model's text, prompt stripped, end-of-text excluded).

    A prompt longer than the context keeps its last ``context_length - max_new_tokens`` tokens.
    """
    eot = tokenizer.eot_token
    keep = max(1, model.config.context_length - cfg.max_new_tokens)
    prompts = [tokenizer.encode_ordinary(format_prompt(r["instruction"], r.get("input") or "", style))[-keep:] for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    with progress(total=len(prompts), desc="generate", unit="response") as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            outs = generate(model, [prompts[i] for i in chosen], cfg, stop_tokens=[eot], pad_token=eot)
            for i, ids in zip(chosen, outs):
                texts[i] = tokenizer.decode(ids).strip()
            bar.update(len(chosen))
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"], "response": t} for r, t in zip(records, texts)]
