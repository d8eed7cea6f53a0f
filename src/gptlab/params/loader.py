"""The typed loader behind ``params.yaml``: plain YAML data into checked dataclasses.

``load_params("params.yaml")`` returns a :class:`Params`. An unknown key, a value of the
wrong type or an impossible value raises :class:`~gptlab.errors.ParamsError` with one line
naming the file, the dotted key, the value and what is allowed, e.g.::

    params.yaml: tokenize.val_fraction=1.5 is impossible: must be > 0 and < 1

Each section's dataclass checks its own values in ``__post_init__`` by raising
``ParamsError("field=value ...")`` (a dataclass built in code raises that line as is); the loader
turns any GptlabError of a section into a ParamsError prefixed with the file and section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from gptlab.errors import GptlabError, ParamsError


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
                errors.append(e)
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
        error = ParamsError(f"{source}: unknown key {prefix}{unknown[0]}; allowed keys: {', '.join(fields)}")
        error.unknown_key, error.allowed = f"{prefix}{unknown[0]}", ", ".join(fields)  # load_params adds the line to delete
        raise error
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{source}: missing key {prefix}{name} ({hints[name]})")
    try:
        return cls(**kwargs)
    except GptlabError as e:  # a section's own check (ParamsError, or GPTConfig's GptlabError) names the field
        raise ParamsError(f"{source}: {prefix}{e}") from None
