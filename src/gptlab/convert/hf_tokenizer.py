"""Tokenizers in Hugging Face's folder layout, out and back in.

Out (:func:`write_hf_tokenizer`): ``tokenizer.json`` (the ``tokenizers`` library's format, what
``AutoTokenizer`` reads), ``tokenizer_config.json`` (special tokens, the chat template where the
tokenizer has one) and, for GPT-2's BPE, OpenAI's ``vocab.json``/``merges.txt`` byte for byte.
Each gptlab tokenizer has an exact Hugging Face equivalent:

- GPT-2 (tiktoken): byte-level BPE over OpenAI's files, GPT-2's regex, ``<|endoftext|>`` special;
- :class:`~gptlab.tokenizer.SimpleTokenizer`: a word-level model behind the same split regex
  (``Split``, isolated), pieces fused back on decode, ``<|unk|>`` for unknown pieces;
- :class:`~gptlab.tokenizer.HFTokenizer`: its own ``tokenizer.json``.

In (:func:`read_hf_tokenizer`): a folder whose ``vocab.json``/``merges.txt`` are OpenAI's GPT-2
files is GPT-2's tiktoken encoding; else its ``tokenizer.json`` (with ``tokenizer_config.json``)
becomes an :class:`~gptlab.tokenizer.HFTokenizer`; a folder with neither is GPT-2 (the
weights-only layout older gptlab exports wrote).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from gptlab.errors import GptlabError
from gptlab.io import read_json, write_json
from gptlab.tokenizer import (
    ENDOFTEXT,
    GPT2_FILES_SHA256,
    SIMPLE_PATTERN,
    UNK,
    GPT2Tokenizer,
    HFTokenizer,
    SimpleTokenizer,
    Tokenizer,
    gpt2_bpe_dir,
    load_tokenizer,
)


def _gpt2_tokenizer():
    """Return GPT-2's BPE as a ``tokenizers.Tokenizer`` built from OpenAI's local files."""

    folder = gpt2_bpe_dir()
    vocab = read_json(folder / "encoder.json", "GPT-2's BPE vocabulary")
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True, normalized=False)])
    return tok


def _simple_tokenizer(simple: SimpleTokenizer):
    """Return a ``tokenizers.Tokenizer`` giving the same ids as ``simple`` (word level, same split)."""

    tok = tokenizers.Tokenizer(models.WordLevel(vocab=dict(simple.str_to_id), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SIMPLE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, UNK)])
    return tok


def to_hf_tokenizer(tokenizer: Tokenizer):
    """Return the ``tokenizers.Tokenizer`` equivalent to a gptlab tokenizer (same ids for any text).

    GptlabError for a tiktoken-based tokenizer other than GPT-2's."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.tokenizer
    if isinstance(tokenizer, SimpleTokenizer):
        return _simple_tokenizer(tokenizer)
    if isinstance(tokenizer, GPT2Tokenizer) and tokenizer.name == "gpt2":
        return _gpt2_tokenizer()
    raise GptlabError(f"tokenizer {tokenizer.name!r} has no Hugging Face form; use gpt2, a SimpleTokenizer or an HFTokenizer")


def special_ids(tokenizer: Tokenizer) -> dict:
    """Return ``{"bos_token_id", "eos_token_id", "stop_token_ids"}`` of a gptlab tokenizer: GPT-2's
    ``<|endoftext|>`` is both bos and eos; an HFTokenizer has no bos here (None) and its
    ``stop_tokens`` as stop ids."""
    eot = int(tokenizer.eot_token)
    bos = eot if isinstance(tokenizer, (GPT2Tokenizer, SimpleTokenizer)) else None
    return {"bos_token_id": bos, "eos_token_id": eot, "stop_token_ids": list(tokenizer.stop_tokens)}


def tokenizer_config(tokenizer: Tokenizer, model_max_length: int) -> dict:
    """Return the ``tokenizer_config.json`` dict (special tokens, chat template where there is one)."""
    hf = to_hf_tokenizer(tokenizer)
    ids = special_ids(tokenizer)
    name = hf.id_to_token
    cfg = {
        "tokenizer_class": "GPT2Tokenizer" if isinstance(tokenizer, GPT2Tokenizer) else "PreTrainedTokenizerFast",
        "add_prefix_space": False,
        "add_bos_token": False,
        "bos_token": name(ids["bos_token_id"]) if ids["bos_token_id"] is not None else None,
        "eos_token": name(ids["eos_token_id"]),
        "unk_token": UNK if isinstance(tokenizer, SimpleTokenizer) else (ENDOFTEXT if isinstance(tokenizer, GPT2Tokenizer) else None),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if tokenizer.chat_template:
        cfg["chat_template"] = tokenizer.chat_template
    return {k: v for k, v in cfg.items() if v is not None}


def generation_config(tokenizer: Tokenizer) -> dict:
    """Return the ``generation_config.json`` dict: bos, eos (every stop token when several)."""
    ids = special_ids(tokenizer)
    stops = ids["stop_token_ids"]
    gen = {"bos_token_id": ids["bos_token_id"], "eos_token_id": stops if len(stops) > 1 else ids["eos_token_id"]}
    return {k: v for k, v in gen.items() if v is not None}


def write_hf_tokenizer(tokenizer: Tokenizer, folder: str | Path, model_max_length: int) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json`` (plus
    ``vocab.json``/``merges.txt`` for GPT-2) into ``folder``; return the file names written."""
    folder = Path(folder)
    to_hf_tokenizer(tokenizer).save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", tokenizer_config(tokenizer, model_max_length))
    write_json(folder / "generation_config.json", generation_config(tokenizer))
    names = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    if isinstance(tokenizer, GPT2Tokenizer):
        shutil.copyfile(gpt2_bpe_dir() / "encoder.json", folder / "vocab.json")
        shutil.copyfile(gpt2_bpe_dir() / "vocab.bpe", folder / "merges.txt")
        names += ["vocab.json", "merges.txt"]
    return names


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_hf_tokenizer(folder: str | Path, gpt2_default: bool = True) -> Tokenizer:
    """Return the tokenizer of a Hugging Face folder: GPT-2's (tiktoken) when its
    ``vocab.json``/``merges.txt`` are OpenAI's files (or, with ``gpt2_default``, when it has no
    ``tokenizer.json``), else an :class:`~gptlab.tokenizer.HFTokenizer` from ``tokenizer.json``
    (+ ``tokenizer_config.json``). GptlabError when there is none and no default."""
    folder = Path(folder)
    gpt2_files = (_sha256(folder / "vocab.json"), _sha256(folder / "merges.txt")) == (GPT2_FILES_SHA256["encoder.json"], GPT2_FILES_SHA256["vocab.bpe"])
    if gpt2_files or (gpt2_default and not (folder / "tokenizer.json").is_file()):
        return load_tokenizer("gpt2")
    if not (folder / "tokenizer.json").is_file():
        raise GptlabError(
            f"{folder / 'tokenizer.json'}: not found; the Hugging Face folder needs its tokenizer (export it with the tokenizer, or copy tokenizer.json in)"
        )
    return load_tokenizer(folder / "tokenizer.json")
