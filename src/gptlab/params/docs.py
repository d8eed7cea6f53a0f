"""Each params field's one docstring, and the ``--help`` text a stage prints from them.

A field is documented by the string literal right after it in its dataclass (an attribute
docstring, read here with :mod:`ast`); ``params.yaml`` comments say only what is specific to
the chosen values. :func:`params_help` lists the fields of the sections a stage reads, each
with its doc, its default and its current value.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import typing
from typing import Any


@functools.lru_cache(maxsize=None)
def _own_docs(cls: type) -> dict[str, str]:
    """``{field: doc}`` of the attribute docstrings written in ``cls``'s own body."""
    module = ast.parse(inspect.getsource(inspect.getmodule(cls)))
    node = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Return ``{field name: doc}`` for the dataclass ``cls``, inherited fields included (a
    subclass's own docstring wins); a field without a docstring is absent."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_docs(base))
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value: Any) -> str:
    """``value`` as params.yaml would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if dataclasses.is_dataclass(value):
        return "{...}"
    if isinstance(value, dict):
        return "{" + ", ".join(value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) and (not value or value != value.strip() or "\n" in value) else str(value)


def _plain(doc: str) -> str:
    """A docstring as one line of plain text: reST roles and literals unmarked."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(doc.split())).replace("``", "")


def _entries(tp: Any) -> tuple[type, str] | None:
    """``(X, "[i]")`` for a ``list[X]`` field type, ``(X, ".<name>")`` for ``dict[str, X]`` (either
    optional), X a dataclass; None for any other type."""
    for arg in typing.get_args(tp):
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(arg) and origin in (list, dict):
            return arg, "[i]" if origin is list else ".<name>"
        inner = _entries(arg)
        if inner is not None:
            return inner
    return None


def describe(cls: type, value: Any, key: str, width: int = 100) -> list[str]:
    """Return the help lines of every field of dataclass ``cls`` under the dotted ``key``
    (``value``: the current instance of ``cls``, or None when unknown); see :func:`field_lines`."""
    return [line for f in dataclasses.fields(cls) for line in field_lines(cls, f.name, value, key, width)]


def field_lines(cls: type, name: str, value: Any, key: str, width: int = 100) -> list[str]:
    """Return the help lines of field ``name`` of dataclass ``cls`` (``value``: the current
    instance, or None): ``key.name = current  (default: ...)``, then its doc indented. A nested
    section is described field by field; the entries of a dict or list of sections by their
    fields' defaults (``key.name.<name>.field``, ``key.name[i].field``)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp, dotted = typing.get_type_hints(cls)[name], f"{key}.{name}" if key else name
    current = getattr(value, name) if value is not None else None
    if dataclasses.is_dataclass(tp):
        return describe(tp, current, dotted, width)
    shown = f"  {dotted} = {_show(current)}" if value is not None else f"  {dotted}"
    default = _default(f)
    lines = [f"{shown}  " + ("(required)" if default is dataclasses.MISSING else f"(default: {_show(default)})")]
    lines += textwrap.wrap(field_docs(cls).get(name, "(undocumented)"), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    entries = _entries(tp)
    if entries is not None:
        lines += describe(entries[0], None, dotted + entries[1], width)
    return lines


def params_help(root: type, keys: list[str], params: Any, source: str) -> str:
    """Return the ``--help`` text of a stage reading the params ``keys`` (dvc.yaml's ``params:``:
    sections such as ``finetune``, or single fields such as ``download.retries``) of the
    dataclass ``root`` (:class:`~gptlab.params.Params`) with the current values of ``params``
    (a ``root``; None when ``source`` could not be read, then only the defaults)."""
    lines = [f"params ({source}; -S KEY=VALUE overrides one): each field = its current value (default), then what it means"]
    for key in keys:
        *parents, name = key.split(".")
        cls, value = root, params
        for part in parents:
            cls, value = typing.get_type_hints(cls)[part], None if value is None else getattr(value, part)
        tp = typing.get_type_hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            lines += textwrap.wrap(f"{key}: {_plain(tp.__doc__ or '')}", 100, subsequent_indent="  ")
        lines += field_lines(cls, name, value, ".".join(parents))
    return "\n".join(lines)
