"""Binary token shards: write them, validate them, and read training windows by memmap.

A shard is a 64-byte little-endian header followed by the token ids as uint16::

    magic  b"GPTLABTK" | version u32 | itemsize u32 | n_tokens u64 | vocab_size u64 | eot i64 | padding

A reader refuses a file whose magic, version or item size is foreign, or whose length
disagrees with ``n_tokens`` (a truncated copy), naming the file and the fix.

The data bytes carry a CRC-32 recorded beside the shards in ``meta.json`` (``files`` ->
name -> ``crc32``), so the shard files themselves keep format version 1. Opening shards
(:class:`TokenShards`, :func:`read_shard`) checks, in one numpy pass each, that every id lies
below the header's ``vocab_size`` and, where ``meta.json`` records one, that the CRC matches:
a flipped byte is refused when the shard is opened, not as an IndexError mid-training.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptlab.errors import GptlabError
from gptlab.io import atomic_file, read_json

if TYPE_CHECKING:
    import torch

MAGIC = b"GPTLABTK"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQq")
DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16
_FIX = "re-run `dvc repro tokenize` (or `gptlab tokenize`) to rebuild the shards"


def shard_name(split: str, index: int) -> str:
    """Return the file name of shard ``index`` of ``split``: ``train-00000.bin``."""
    return f"{split}-{index:05d}.bin"


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int, eot_token: int) -> None:
    """Write ``tokens`` (1-D ints < 65536) as a shard at ``path`` (via a temp file and rename)."""
    _check_vocab(path, vocab_size)
    tokens = _checked_ids(path, np.asarray(tokens), vocab_size)
    with atomic_file(path, "wb") as f:
        f.write(_header(tokens.size, vocab_size, eot_token))
        f.write(tokens.data)


def _header(n_tokens: int, vocab_size: int, eot_token: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, DTYPE.itemsize, n_tokens, vocab_size, eot_token).ljust(HEADER_BYTES, b"\0")


def _check_vocab(where: str | Path, vocab_size: int) -> None:
    if vocab_size > MAX_VOCAB:
        raise GptlabError(f"{where}: vocab_size {vocab_size} does not fit uint16 shards (max {MAX_VOCAB}); use a smaller vocabulary")


def _checked_ids(where: str | Path, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Return ``tokens`` as contiguous little-endian uint16 after checking they lie in ``[0, vocab_size)``
    (GptlabError naming ``where`` otherwise); uint16 ids of a full 65,536-id vocabulary need no pass."""
    if tokens.size and (tokens.dtype != DTYPE or vocab_size < MAX_VOCAB):
        low, high = (int(tokens.min()) if tokens.dtype.kind != "u" else 0), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise GptlabError(f"{where}: token ids must lie in [0, {vocab_size}); got {low}..{high}")
    return np.ascontiguousarray(tokens, dtype=DTYPE)


def read_header(path: str | Path) -> dict:
    """Return a shard's header as a dict (n_tokens, vocab_size, eot_token, version), validated
    against the file's length. Raises GptlabError for a foreign, unsupported or truncated file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise GptlabError(f"{path}: shard not found; {_FIX}") from None
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise GptlabError(f"{path}: not a gptlab token shard (no {MAGIC.decode()} header); {_FIX}")
    magic, version, itemsize, n_tokens, vocab_size, eot = _HEADER.unpack(raw[: _HEADER.size])
    if version != VERSION or itemsize != DTYPE.itemsize:
        raise GptlabError(f"{path}: shard format version {version} / item size {itemsize} is not supported (want {VERSION} / {DTYPE.itemsize}); {_FIX}")
    expected = HEADER_BYTES + n_tokens * itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise GptlabError(f"{path}: {state}: the header says {n_tokens} tokens ({expected} bytes) but the file has {size} bytes; {_FIX}")
    return {"version": version, "n_tokens": n_tokens, "vocab_size": vocab_size, "eot_token": eot}


def data_checksum(tokens: np.ndarray) -> str:
    """Return the CRC-32 of a shard's data bytes (``tokens`` as little-endian uint16) as 8 hex digits."""
    return f"{zlib.crc32(np.ascontiguousarray(tokens, dtype=DTYPE)) & 0xFFFFFFFF:08x}"


def recorded_checksums(folder: str | Path) -> dict[str, str]:
    """Return ``{shard file name: crc32 hex}`` from ``folder/meta.json`` ({} when it records none)."""
    path = Path(folder) / "meta.json"
    if not path.exists():
        return {}
    meta = read_json(path, f"the shards' meta.json: {_FIX}")
    files = meta.get("files") if isinstance(meta, dict) else None
    return {name: entry["crc32"] for name, entry in (files or {}).items() if isinstance(entry, dict) and "crc32" in entry}


def verify_shard(path: str | Path, data: np.ndarray, vocab_size: int, crc32: str | None = None) -> None:
    """Check a shard's ``data`` (its ids): every id below ``vocab_size`` and, when given, the
    CRC-32 of the data bytes equal to ``crc32``. Raises GptlabError naming the shard."""
    if crc32 is not None and (actual := data_checksum(data)) != crc32:
        raise GptlabError(f"{path}: data checksum crc32 {actual} does not match meta.json ({crc32}): the file is corrupt; {_FIX}")
    if data.size and (top := int(data.max())) >= vocab_size:
        where = int(np.argmax(data >= vocab_size))
        raise GptlabError(f"{path}: token id {top} (first bad one at position {where}) is outside the header's vocab_size {vocab_size}; {_FIX}")


def read_shard(path: str | Path, crc32: str | None = None) -> np.ndarray:
    """Return the tokens of a validated shard as a read-only uint16 memmap of shape (n_tokens,).

    Ids are checked against the header's vocab_size, and the data against ``crc32`` (8 hex
    digits, e.g. from :func:`recorded_checksums`) when given.
    """
    header = read_header(path)
    data = _memmap(path, header["n_tokens"])
    verify_shard(path, data, header["vocab_size"], crc32)
    return data


def _memmap(path: str | Path, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:
        return np.zeros(0, dtype=DTYPE)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def shards_vocab_size(folder: str | Path) -> int:
    """Return the vocabulary size of the tokenizer that wrote the shards in ``folder`` (from
    ``meta.json``); GptlabError when the folder has none."""
    path = Path(folder) / "meta.json"
    meta = read_json(path, "the shards' meta.json: run `dvc repro tokenize` first")
    try:
        return int(meta["vocab_size"])
    except (TypeError, ValueError, KeyError) as e:
        raise GptlabError(f"{path}: cannot read the shards' vocab_size ({e}); run `dvc repro tokenize` first") from None


def split_paths(folder: str | Path, split: str) -> list[Path]:
    """Return the shard paths of ``split`` in ``folder``, in order; GptlabError if there are none."""
    paths = sorted(Path(folder).glob(f"{split}-*.bin"))
    if not paths:
        raise GptlabError(f"{folder}: no {split} shards ({split}-NNNNN.bin); run `dvc repro tokenize` first")
    return paths


class ShardWriter:
    """Append token arrays to ``folder/<split>-NNNNN.bin``, starting a new shard every ``max_tokens``.

    Tokens stream straight into the open shard (a ``.tmp`` file whose header is filled in and
    which is renamed when the shard is complete), with the CRC-32 kept as they pass, so no
    shard is ever held in memory and each token is copied once.
    """

    def __init__(self, folder: str | Path, split: str, max_tokens: int, vocab_size: int, eot_token: int):
        _check_vocab(folder, vocab_size)
        self.folder, self.split, self.max_tokens = Path(folder), split, max_tokens
        self.vocab_size, self.eot_token = vocab_size, eot_token
        self.paths: list[Path] = []
        self.checksums: list[str] = []  # crc32 of each written shard's data, as data_checksum
        self.tokens = 0
        self._file = None  # the open shard's .tmp file
        self._count = 0  # tokens in the open shard
        self._crc = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens`` (1-D ids in ``[0, vocab_size)``); GptlabError naming the shard otherwise."""
        tokens = _checked_ids(self._path(), np.asarray(tokens), self.vocab_size)
        while len(tokens):
            if self._file is None:
                self._open()
            part = tokens[: self.max_tokens - self._count]
            self._file.write(part.data)
            self._crc = zlib.crc32(part.data, self._crc)
            self._count += len(part)
            self.tokens += len(part)
            tokens = tokens[len(part) :]
            if self._count == self.max_tokens:
                self._finish()

    def close(self) -> list[Path]:
        """Complete the open shard (an empty one when nothing was written) and return every shard path written, in order."""
        if self._file is None and not self.paths:
            self._open()
        if self._file is not None:
            self._finish()
        return self.paths

    def _path(self) -> Path:
        """The path of the shard being (or about to be) written."""
        return self.folder / shard_name(self.split, len(self.paths))

    def _open(self) -> None:
        self._file = open(self._path().with_name(self._path().name + ".tmp"), "wb")
        self._file.write(bytes(HEADER_BYTES))
        self._count, self._crc = 0, 0

    def _finish(self) -> None:
        path = self._path()
        self._file.seek(0)
        self._file.write(_header(self._count, self.vocab_size, self.eot_token))
        self._file.close()
        self._file = None
        os.replace(path.with_name(path.name + ".tmp"), path)
        self.paths.append(path)
        self.checksums.append(f"{self._crc & 0xFFFFFFFF:08x}")


class TokenShards:
    """The shards of one split as one source of context windows, memory-mapped lazily.

    Windows never cross a shard boundary. ``x`` and ``y`` are ``(batch, context)`` int64
    tensors with ``y`` the next token after each position of ``x``. Opening reads every
    shard's 64-byte header (lengths and vocabulary) but maps at most ``max_open`` shards at a
    time (least recently used ones are closed), so a split of thousands of shards holds few
    files open. Each shard is verified (:func:`verify_shard`: ids within the vocabulary,
    CRC-32 against the folder's ``meta.json`` when it records one) the first time it is
    mapped; the first ``max_open`` are mapped, so verified, up front: a corrupt shard of a
    small split fails here with one line.
    """

    def __init__(self, paths: Sequence[str | Path], max_open: int = 64):
        if not paths:
            raise GptlabError("TokenShards: no shard paths given")
        if max_open < 1:
            raise GptlabError(f"TokenShards: max_open={max_open} must be >= 1")
        self.paths = [Path(p) for p in paths]
        self.max_open = max_open
        headers = [read_header(p) for p in self.paths]
        vocab_sizes = {h["vocab_size"] for h in headers}
        if len(vocab_sizes) != 1:
            raise GptlabError(f"{self.paths[0].parent}: shards disagree on vocab_size ({sorted(vocab_sizes)}); rebuild them")
        self.vocab_size = vocab_sizes.pop()
        self.lengths = np.array([h["n_tokens"] for h in headers], dtype=np.int64)
        self._checksums: dict[Path, dict[str, str]] = {}
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._verified: set[int] = set()
        for i in range(min(max_open, len(self.paths))):
            self.array(i)

    @classmethod
    def from_folder(cls, folder: str | Path, split: str, max_open: int = 64) -> TokenShards:
        """Open every ``<split>-*.bin`` shard in ``folder``."""
        return cls(split_paths(folder, split), max_open)

    @property
    def open_count(self) -> int:
        """How many shards are mapped now (at most ``max_open``)."""
        return len(self._open)

    def array(self, i: int) -> np.ndarray:
        """Return shard ``i``'s tokens as a read-only uint16 memmap of shape (n_tokens,),
        mapping (and, the first time, verifying) it and closing the least recently used map."""
        data = self._open.get(i)
        if data is not None:
            self._open.move_to_end(i)
            return data
        path = self.paths[i]
        data = _memmap(path, int(self.lengths[i]))
        if i not in self._verified:
            if path.parent not in self._checksums:
                self._checksums[path.parent] = recorded_checksums(path.parent)
            verify_shard(path, data, self.vocab_size, self._checksums[path.parent].get(path.name))
            self._verified.add(i)
        self._open[i] = data
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return data

    @property
    def n_tokens(self) -> int:
        """Total tokens across the split's shards."""
        return int(self.lengths.sum())

    def check_context(self, context: int) -> np.ndarray:
        """Return the number of window starts per shard for ``context``; GptlabError naming the
        context length when no shard holds a window of ``context + 1`` tokens."""
        starts = self.lengths - context  # number of valid window starts per shard
        if context < 1 or starts.max() < 1:
            raise GptlabError(
                f"{self.paths[0].parent}: context length {context} is too long for these shards "
                f"(longest holds {int(self.lengths.max())} tokens, a window needs context + 1); "
                "lower the context length or use a larger corpus"
            )
        return np.clip(starts, 0, None)

    def draw(self, n: int, context: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` uniformly random window positions with ``rng``: (shard index, offset), each (n,) int64."""
        starts = self.check_context(context)
        shard_idx = rng.choice(len(self.paths), size=n, p=starts / starts.sum())
        offsets = (rng.random(n) * starts[shard_idx]).astype(np.int64)
        return shard_idx, offsets

    def gather(self, shard_idx: np.ndarray, offsets: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the windows at the given positions: ``x, y`` (len, context) int64, ``y`` shifted by one."""
        rows = np.stack([self.array(int(s))[o : o + context + 1] for s, o in zip(shard_idx, offsets)]).astype(np.int64)
        return _as_xy_rows(rows)

    def random_windows(self, batch: int, context: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``batch`` windows at uniformly random positions drawn with ``rng``.

        ``x, y``: (batch, context) int64, ``y[:, t] == x[:, t + 1]`` within the window.
        """
        return self.gather(*self.draw(batch, context, rng), context)

    def spread_positions(self, n: int, context: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``n`` window positions evenly spread over the whole split (every shard, start to
        end; the same for the same shards): the middles of ``n`` equal parts of all window starts,
        shard after shard. (shard index, offset), each (min(n, starts),) int64."""
        starts = self.check_context(context)
        total = int(starts.sum())
        n = min(n, total)
        flat = (2 * np.arange(n, dtype=np.int64) + 1) * total // (2 * n)
        ends = np.cumsum(starts)
        shard_idx = np.searchsorted(ends, flat, side="right")
        return shard_idx, flat - (ends[shard_idx] - starts[shard_idx])

    def spread_windows(self, batch: int, context: int, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the ``n`` windows of :meth:`spread_positions`, ``batch`` at a time (the last may
        be smaller): fixed evaluation windows that sample the whole split, not its first
        ``n x context`` tokens. Shapes as in :meth:`random_windows`."""
        shard_idx, offsets = self.spread_positions(n, context)
        for first in range(0, len(offsets), batch):
            yield self.gather(shard_idx[first : first + batch], offsets[first : first + batch], context)

    def sequential_windows(self, batch: int, context: int, max_windows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield non-overlapping windows in file order, ``batch`` at a time (the last may be
        smaller), at most ``max_windows`` in all. Shapes as in :meth:`random_windows`."""
        self.check_context(context)
        rows: list[np.ndarray] = []
        emitted = 0
        for i in range(len(self.paths)):
            if max_windows is not None and emitted >= max_windows:
                break
            if self.lengths[i] <= context:
                continue
            arr = self.array(i)
            for start in range(0, len(arr) - context, context):
                if max_windows is not None and emitted >= max_windows:
                    break
                rows.append(np.array(arr[start : start + context + 1]))
                emitted += 1
                if len(rows) == batch:
                    yield _as_xy(rows)
                    rows = []
        if rows:
            yield _as_xy(rows)


def _as_xy(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return _as_xy_rows(np.stack(rows).astype(np.int64))


def _as_xy_rows(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    import torch  # imported here: the tokenize stage uses this module without torch

    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
