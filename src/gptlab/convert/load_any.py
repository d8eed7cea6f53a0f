"""One loader for any model folder gptlab reads: its own checkpoints, Hugging Face folders and
OpenAI's TensorFlow GPT-2 checkpoints (the converters below it; :mod:`gptlab.checkpoint` reads
only the gptlab format)."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.checkpoint import FORMAT, check_tokenizer_fits, load_model, read_config
from gptlab.convert.hf import MODEL_TYPES, load_hf_dir
from gptlab.convert.hf_tokenizer import read_hf_tokenizer
from gptlab.convert.openai_tf import load_openai_tf
from gptlab.errors import GptlabError
from gptlab.model import GPT
from gptlab.tokenizer import Tokenizer, load_tokenizer


def load_any(folder: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """Return ``(model, tokenizer)`` from a gptlab checkpoint folder, a Hugging Face folder
    (``config.json`` with ``model_type`` gpt2, llama or qwen2; the tokenizer from its files, see
    :func:`gptlab.convert.hf_tokenizer.read_hf_tokenizer`) or an OpenAI TensorFlow GPT-2 folder
    (``hparams.json`` + ``model.ckpt.*``); ``folder`` may carry an ``hf:`` prefix (as
    ``convert.source`` spells it). The model is in eval mode on ``device``.

    Every reader checks the weights' headers against the config before building the model, so
    an absurd config (a million layers) fails at once, naming the key; a tokenizer with ids the
    model's ``vocab_size`` does not hold is refused, naming the folder.
    """
    folder = Path(str(folder).removeprefix("hf:"))
    if (folder / "hparams.json").exists() and not (folder / "config.json").exists():
        model, tokenizer = load_openai_tf(folder), load_tokenizer("gpt2")
        check_tokenizer_fits(tokenizer, model.config.vocab_size, folder)
        return model.to(device).eval(), tokenizer
    data = read_config(folder)
    if data.get("model_type") in MODEL_TYPES:
        model = load_hf_dir(folder)
        tokenizer = read_hf_tokenizer(folder, gpt2_default=data["model_type"] == "gpt2")
        check_tokenizer_fits(tokenizer, model.config.vocab_size, folder)
        return model.to(device).eval(), tokenizer
    if data.get("format") != FORMAT:
        raise GptlabError(f"{folder / 'config.json'}: neither a gptlab checkpoint (format: gptlab) nor a Hugging Face GPT-2, Llama or Qwen2 config")
    return load_model(folder, device)
