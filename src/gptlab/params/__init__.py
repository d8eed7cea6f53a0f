"""Typed views of ``params.yaml``: one dataclass per section, strictly checked.

``load_params("params.yaml")`` returns a :class:`Params`. An unknown key, a value of the
wrong type or an impossible value raises :class:`~gptlab.errors.ParamsError` with one line
naming the file, the dotted key, the value and what is allowed, e.g.::

    params.yaml: tokenize.val_fraction=1.5 is impossible: must be > 0 and < 1

The section types live beside this file by concern (data, training, evaluation, litgpt) and
are the library's configuration types too: code takes them, never a copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gptlab.errors import ParamsError


class _Yaml12Numbers(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) that also reads YAML 1.2 floats without a dot (``1e-3``,
    ``5E-5``) as numbers, as DVC's reader (and so ``dvc exp run -S``) does; 1.1 reads them as strings."""


_Yaml12Numbers.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Yaml12Numbers)  # noqa: S506 (a SafeLoader subclass)


from gptlab.params.data import DownloadParams, InstructionsParams, SourceFile, SourceParams, TokenizeParams
from gptlab.params.evaluation import BootstrapParams, GenerateParams, JudgeParams, ScoreParams
from gptlab.params.litgpt import LitgptParams
from gptlab.params.loader import from_dict
from gptlab.params.training import ConvertParams, FinetuneParams, LoopParams, LoraParams, ModelParams, PretrainParams

__all__ = [
    "BootstrapParams",
    "ConvertParams",
    "DownloadParams",
    "FinetuneParams",
    "GenerateParams",
    "InstructionsParams",
    "JudgeParams",
    "LitgptParams",
    "LoopParams",
    "LoraParams",
    "ModelParams",
    "Params",
    "PretrainParams",
    "ScoreParams",
    "SourceFile",
    "SourceParams",
    "TokenizeParams",
    "from_dict",
    "load_params",
]


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    download: DownloadParams
    """the download stage"""
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    """the tokenize stage"""
    model: ModelParams = field(default_factory=lambda: ModelParams(preset="gpt-small"))
    """the model pretrain trains (its shape and family)"""
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    """the pretrain stage"""
    convert: ConvertParams = field(default_factory=ConvertParams)
    """the base model (download_checkpoint and convert stages)"""
    instructions: InstructionsParams = field(default_factory=InstructionsParams)
    """the instructions stage"""
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    """the finetune stage (generate_base and reference_loss_base read its prompt_style)"""
    generate: GenerateParams = field(default_factory=GenerateParams)
    """the generate stage"""
    score: ScoreParams = field(default_factory=ScoreParams)
    """the score stage (the reference_loss stages read its loss_batch_size)"""
    litgpt: LitgptParams = field(default_factory=LitgptParams)
    """the litgpt track (score reads its enabled)"""
    seed: int = 1337
    """the global seed: data splits, weight init, data order, sampling (0 .. 2**32 - 1)"""

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= 2**32 - 1:  # numpy's and torch's seeds are unsigned 32-bit
            raise ParamsError(f"seed={self.seed} is impossible: must be an integer from 0 to {2**32 - 1}")


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Return the typed contents of the params file at ``path``, with ``overrides`` applied.

    Each override is ``dotted.key=value`` (value parsed as YAML), as ``dvc exp run -S`` takes it.
    Raises ParamsError naming the file and the dotted key on any unknown key, wrong type
    or impossible value, and when the file is missing or not YAML; an unknown key found in the
    file is named with its line (``params.yaml:42: unknown key foo; delete it (line 42: ...)``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = _yaml(text)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from the project root or pass --params FILE") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None
    data = data or {}
    for item in overrides:
        apply_override(data, item, str(path))
    try:
        return from_dict(Params, data, source=str(path) + (" (with -S overrides)" if overrides else ""))
    except ParamsError as e:
        key = getattr(e, "unknown_key", None)
        where = _key_line(text, key) if key else None
        if where is None:  # not in the file (an -S override) or not found: the loader's line as is
            raise
        line, content, block = where
        under = " and the lines indented under it" if block else ""
        raise ParamsError(
            f"{path}:{line}: unknown key {key}; delete it (line {line}: {content!r}{under}), e.g. a leftover of `dvc exp run -S +KEY=VALUE`, "
            f"or fix its spelling; allowed keys: {e.allowed}"
        ) from None


def _key_line(text: str, dotted: str) -> tuple[int, str, bool] | None:
    """Return (1-based line, that line's text, whether the key opens a block of lines under it) of the
    key ``dotted`` (``a.b[2].c``) in the YAML ``text``; None when it is not found there."""
    try:
        node = yaml.compose(text, Loader=_Yaml12Numbers)
    except yaml.YAMLError:
        return None
    key_node = None
    for index, name in re.findall(r"\[(\d+)\]|([^.\[\]]+)", dotted):
        if index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
        elif name and isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name]
            if not match:
                return None
            key_node, node = match[-1]
        else:
            return None
    if key_node is None:
        return None
    line = key_node.start_mark.line
    block = isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style and node.start_mark.line > line
    return line + 1, text.splitlines()[line].strip()[:80], block


def apply_override(data: dict, item: str, source: str = "params") -> None:
    """Set ``data[a][b]... = value`` for an override ``a.b...=value`` (value parsed as YAML), in place."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"-S {item!r}: expected KEY=VALUE, e.g. -S pretrain.max_steps=50")
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    *parents, last = key.strip().split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{source}: -S {key}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[last] = value
