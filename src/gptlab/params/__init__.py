"""Typed views of ``params.yaml``: one dataclass per section, strictly checked.

``load_params("params.yaml")`` returns a :class:`Params`. An unknown key, a value of the
wrong type or an impossible value raises :class:`~gptlab.errors.ParamsError` with one line
naming the file, the dotted key, the value and what is allowed, e.g.::

    params.yaml: tokenize.val_fraction=1.5 is impossible: must be > 0 and < 1

The section types live beside this file by concern (data, training, evaluation, litgpt) and
are the library's configuration types too: code takes them, never a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gptlab.errors import ParamsError
from gptlab.params.data import DownloadParams, InstructionsParams, SourceParams, TokenizeParams
from gptlab.params.evaluation import GenerateParams, JudgeParams, ScoreParams
from gptlab.params.litgpt import LitgptParams
from gptlab.params.loader import from_dict
from gptlab.params.training import ConvertParams, FinetuneParams, LoopParams, LoraParams, ModelParams, PretrainParams

__all__ = [
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
    "SourceParams",
    "TokenizeParams",
    "from_dict",
    "load_params",
]


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
