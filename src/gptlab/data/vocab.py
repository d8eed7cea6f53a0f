"""Tokenizers built for a corpus: a byte-level BPE trained on its train split, and bytes.

Both are Hugging Face ``tokenizers`` tokenizers behind gptlab's interface
(:class:`gptlab.tokenizer.HFTokenizer`), saved beside the shards as ``tokenizer.json`` and
carried by every later stage (the checkpoint, generate, serve, the exports):

- :func:`train_bpe`: GPT-2's recipe on our data: GPT-2's pre-tokenizer (so text pieces cut at
  a line break between two non-space characters encode exactly as the whole, as for GPT-2),
  the 256 byte symbols, then the most frequent merges up to ``vocab_size`` ids, the last
  being ``<|endoftext|>``. Deterministic: the same texts give the same ``tokenizer.json``.
- :func:`byte_tokenizer`: one token per UTF-8 byte (id = byte value) plus ``<|endoftext|>``
  (257 ids): the char-level recipe's tokenizer, for any language.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from gptlab.data.shards import MAX_VOCAB
from gptlab.errors import GptlabError
from gptlab.tokenizer import BYTE_DECODER, ENDOFTEXT, HFTokenizer

BYTE_VOCAB = 257  # 256 bytes + <|endoftext|>


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    return {b: c for c, b in BYTE_DECODER.items()}


def _byte_level(model) -> object:
    """A ``tokenizers.Tokenizer`` around ``model`` with GPT-2's byte-level pre-tokenizer and decoder."""

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def byte_tokenizer() -> HFTokenizer:
    """Return the byte tokenizer: ids 0..255 are the UTF-8 bytes, 256 is ``<|endoftext|>``."""

    alphabet = _bytes_to_unicode()
    tok = _byte_level(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    tok.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
    return HFTokenizer(tok, eot_token=256)


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Return a byte-level BPE of ``vocab_size`` ids trained on ``texts`` (streamed once).

    Ids 0..255 are the bytes (as in :func:`byte_tokenizer`), then the merges in the order
    learnt, then ``<|endoftext|>`` (id ``vocab_size - 1``). A corpus too small for that many
    merges gives fewer ids (``n_vocab`` says how many). GptlabError for an impossible size.
    """

    if not BYTE_VOCAB < vocab_size <= MAX_VOCAB:
        raise GptlabError(
            f"tokenize.vocab_size={vocab_size} is impossible for a byte-level BPE: it needs the 256 bytes, <|endoftext|> and at least one merge, "
            f"and uint16 shards hold at most {MAX_VOCAB} ids; pick a value in {BYTE_VOCAB + 1}..{MAX_VOCAB} (e.g. 4096)"
        )
    alphabet = _bytes_to_unicode()
    tok = _byte_level(models.BPE())
    # The trainer puts special tokens first and the alphabet in an unspecified order; train
    # without the special token, then renumber: bytes in byte order, merges, <|endoftext|> last.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=list(alphabet.values()), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    symbols = set(alphabet.values())
    vocab = {alphabet[b]: b for b in range(256)}
    for piece, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):  # merges keep the order learnt
        if piece not in symbols:
            vocab[piece] = len(vocab)
    renumbered = _byte_level(models.BPE(vocab=vocab, merges=_merges(tok)))
    renumbered.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
    return HFTokenizer(renumbered, eot_token=len(vocab))


def _merges(tok) -> list[tuple[str, str]]:
    """Return the merge rules of a trained BPE ``tokenizers.Tokenizer``, in rank order."""
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]
