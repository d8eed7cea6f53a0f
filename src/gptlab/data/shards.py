"""Binary token shards: write them, validate them, and read training windows by memmap.

A shard is a 64-byte little-endian header followed by the token ids as uint16::

    magic  b"GPTLABTK" | version u32 | itemsize u32 | n_tokens u64 | vocab_size u64 | eot i64 | padding

A reader refuses a file whose magic, version or item size is foreign, or whose length
disagrees with ``n_tokens`` (a truncated copy), naming the file and the fix.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import GptlabError

MAGIC = b"GPTLABTK"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQq")
DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16


def shard_name(split: str, index: int) -> str:
    """Return the file name of shard ``index`` of ``split``: ``train-00000.bin``."""
    return f"{split}-{index:05d}.bin"


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int, eot_token: int) -> None:
    """Write ``tokens`` (1-D ints < 65536) as a shard at ``path`` (via a temp file and rename)."""
    if vocab_size > MAX_VOCAB:
        raise GptlabError(f"{path}: vocab_size {vocab_size} does not fit uint16 shards (max {MAX_VOCAB}); use a smaller vocabulary")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise GptlabError(f"{path}: token ids must lie in [0, {vocab_size}); got {int(tokens.min())}..{int(tokens.max())}")
    header = _HEADER.pack(MAGIC, VERSION, DTYPE.itemsize, tokens.size, vocab_size, eot_token).ljust(HEADER_BYTES, b"\0")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(tokens.astype(DTYPE, copy=False).tobytes())
    os.replace(tmp, path)


def read_header(path: str | Path) -> dict:
    """Return a shard's header as a dict (n_tokens, vocab_size, eot_token, version), validated
    against the file's length. Raises GptlabError for a foreign, unsupported or truncated file."""
    path = Path(path)
    fix = "re-run `dvc repro tokenize` (or `gptlab tokenize`) to rebuild the shards"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise GptlabError(f"{path}: shard not found; {fix}") from None
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise GptlabError(f"{path}: not a gptlab token shard (no {MAGIC.decode()} header); {fix}")
    magic, version, itemsize, n_tokens, vocab_size, eot = _HEADER.unpack(raw[: _HEADER.size])
    if version != VERSION or itemsize != DTYPE.itemsize:
        raise GptlabError(f"{path}: shard format version {version} / item size {itemsize} is not supported (want {VERSION} / {DTYPE.itemsize}); {fix}")
    expected = HEADER_BYTES + n_tokens * itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise GptlabError(f"{path}: {state}: the header says {n_tokens} tokens ({expected} bytes) but the file has {size} bytes; {fix}")
    return {"version": version, "n_tokens": n_tokens, "vocab_size": vocab_size, "eot_token": eot}


def read_shard(path: str | Path) -> np.ndarray:
    """Return the tokens of a validated shard as a read-only uint16 memmap of shape (n_tokens,)."""
    return _memmap(path, read_header(path)["n_tokens"])


def _memmap(path: str | Path, n_tokens: int) -> np.ndarray:
    if n_tokens == 0:
        return np.zeros(0, dtype=DTYPE)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def split_paths(folder: str | Path, split: str) -> list[Path]:
    """Return the shard paths of ``split`` in ``folder``, in order; GptlabError if there are none."""
    paths = sorted(Path(folder).glob(f"{split}-*.bin"))
    if not paths:
        raise GptlabError(f"{folder}: no {split} shards ({split}-NNNNN.bin); run `dvc repro tokenize` first")
    return paths


class ShardWriter:
    """Append token arrays to ``folder/<split>-NNNNN.bin``, starting a new shard every ``max_tokens``."""

    def __init__(self, folder: str | Path, split: str, max_tokens: int, vocab_size: int, eot_token: int):
        self.folder, self.split, self.max_tokens = Path(folder), split, max_tokens
        self.vocab_size, self.eot_token = vocab_size, eot_token
        self.paths: list[Path] = []
        self.tokens = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens`` (1-D)."""
        self._buffer.append(np.asarray(tokens, dtype=DTYPE))
        self._buffered += len(tokens)
        self.tokens += len(tokens)
        while self._buffered >= self.max_tokens:
            joined = np.concatenate(self._buffer)
            self._flush(joined[: self.max_tokens])
            rest = joined[self.max_tokens :]
            self._buffer, self._buffered = [rest], len(rest)

    def close(self) -> list[Path]:
        """Write what is buffered and return every shard path written, in order."""
        if self._buffered or not self.paths:
            self._flush(np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=DTYPE))
        self._buffer, self._buffered = [], 0
        return self.paths

    def _flush(self, tokens: np.ndarray) -> None:
        path = self.folder / shard_name(self.split, len(self.paths))
        write_shard(path, tokens, self.vocab_size, self.eot_token)
        self.paths.append(path)


class TokenShards:
    """The shards of one split, memory-mapped, as one source of context windows.

    Windows never cross a shard boundary. ``x`` and ``y`` are ``(batch, context)`` int64
    tensors with ``y`` the next token after each position of ``x``.
    """

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise GptlabError("TokenShards: no shard paths given")
        self.paths = [Path(p) for p in paths]
        headers = [read_header(p) for p in self.paths]
        self.arrays = [_memmap(p, h["n_tokens"]) for p, h in zip(self.paths, headers)]
        vocab_sizes = {h["vocab_size"] for h in headers}
        if len(vocab_sizes) != 1:
            raise GptlabError(f"{self.paths[0].parent}: shards disagree on vocab_size ({sorted(vocab_sizes)}); rebuild them")
        self.vocab_size = vocab_sizes.pop()
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)

    @classmethod
    def from_folder(cls, folder: str | Path, split: str) -> TokenShards:
        """Open every ``<split>-*.bin`` shard in ``folder``."""
        return cls(split_paths(folder, split))

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
        shard_idx = rng.choice(len(self.arrays), size=n, p=starts / starts.sum())
        offsets = (rng.random(n) * starts[shard_idx]).astype(np.int64)
        return shard_idx, offsets

    def gather(self, shard_idx: np.ndarray, offsets: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the windows at the given positions: ``x, y`` (len, context) int64, ``y`` shifted by one."""
        rows = np.stack([self.arrays[s][o : o + context + 1] for s, o in zip(shard_idx, offsets)]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def random_windows(self, batch: int, context: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``batch`` windows at uniformly random positions drawn with ``rng``.

        ``x, y``: (batch, context) int64, ``y[:, t] == x[:, t + 1]`` within the window.
        """
        return self.gather(*self.draw(batch, context, rng), context)

    def sequential_windows(self, batch: int, context: int, max_windows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield non-overlapping windows in file order, ``batch`` at a time (the last may be
        smaller), at most ``max_windows`` in all. Shapes as in :meth:`random_windows`."""
        self.check_context(context)
        rows: list[np.ndarray] = []
        emitted = 0
        for arr in self.arrays:
            for start in range(0, len(arr) - context, context):
                if max_windows is not None and emitted >= max_windows:
                    break
                rows.append(arr[start : start + context + 1])
                emitted += 1
                if len(rows) == batch:
                    yield _as_xy(rows)
                    rows = []
        if rows:
            yield _as_xy(rows)


def _as_xy(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(np.stack(rows).astype(np.int64))
    return t[:, :-1], t[:, 1:]
