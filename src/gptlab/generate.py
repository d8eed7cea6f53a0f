"""The ``generate`` stage: a model's responses to held-out instructions.

Prompts are formatted in the fine-tuning prompt style (recorded in the model folder), sampled with the one sampling function
(:func:`gptlab.sampling.generate`) in batches (sorted by length so little padding is fed),
stopped at end-of-text, and returned without the prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from gptlab.data.instructions import load_records
from gptlab.data.prompts import encode_prompt, format_prompt, model_prompt_style, response_text
from gptlab.device import Distributed, pick_device
from gptlab.errors import GptlabError
from gptlab.inference import prepare
from gptlab.io import write_json
from gptlab.lora import load_merged
from gptlab.model import GPT
from gptlab.params import GenerateParams
from gptlab.progress import progress
from gptlab.sampling import NonFiniteLogits, SamplingConfig, generate
from gptlab.tokenizer import Tokenizer


def sampling_config(p: GenerateParams, seed: int) -> SamplingConfig:
    """The ``generate`` params with ``seed`` null replaced by the global ``seed``."""
    return p if p.seed is not None else dataclasses.replace(p, seed=seed)


def answer_file(
    model_dir: str | Path,
    test_path: str | Path,
    out_path: str | Path,
    p: GenerateParams,
    seed: int,
    style: str | None = None,
    adapter_dir: str | Path | None = None,
) -> list[dict]:
    """Answer every record of ``test_path`` with the model in ``model_dir`` (plus a LoRA adapter),
    its weights and decode step as ``p.weights``/``p.compile`` say (:func:`gptlab.inference.prepare`);
    write the records with their ``response`` to ``out_path`` (JSON) and return them.

    ``style``: the prompt style; None: the one recorded in ``model_dir`` when it was
    fine-tuned, else alpaca."""
    device = pick_device(p.device, Distributed())
    model, tok = load_merged(model_dir, adapter_dir, str(device))
    model = prepare(model, p.weights, p.compile)
    style = style or model_prompt_style(model_dir, "alpaca")
    try:
        out = respond(model, tok, load_records(test_path), sampling_config(p, seed), p.batch_size, style)
    except NonFiniteLogits as e:
        raise GptlabError(f"{model_dir}: {e}") from None
    write_json(out_path, out)
    return out


def respond(model: GPT, tokenizer: Tokenizer, records: Sequence[dict], cfg: SamplingConfig, batch_size: int = 16, style: str = "alpaca") -> list[dict]:
    """Return one record per input record: ``instruction``, ``input``, ``output`` (the
    reference) and ``response`` (the model's text, prompt stripped, end-of-text excluded).

    A prompt longer than the context keeps its last ``context_length - max_new_tokens`` tokens.
    """
    eot = tokenizer.eot_token
    keep = max(1, model.config.context_length - cfg.max_new_tokens)
    template = tokenizer.chat_template
    prompts = [encode_prompt(tokenizer, format_prompt(r["instruction"], r.get("input") or "", style, template), style)[-keep:] for r in records]
    stops = tokenizer.stop_tokens
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    with progress(total=len(prompts), desc="generate", unit="response") as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            outs = generate(model, [prompts[i] for i in chosen], cfg, stop_tokens=stops, pad_token=eot)
            for i, ids in zip(chosen, outs):
                texts[i] = response_text(tokenizer.decode(ids), style)
            bar.update(len(chosen))
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"], "response": t} for r, t in zip(records, texts)]
