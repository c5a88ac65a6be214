"""Typed configs: frozen dataclasses whose fields are documented by the string under each one.

Overrides come as ``key=value`` strings (``model.num_layers=6``) and are parsed with the field's
own type. An unknown key is an error that lists the valid ones: the record scripts' silently
ignored environment variables are exactly what this replaces.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache

from .errors import GolfError


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass to the docstring written right below it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        is_doc = isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant)
        if is_field and is_doc and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def to_dict(config) -> dict:
    """Every field, defaults included, as plain JSON-able values (nested configs become dicts)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict):
    """Rebuild a config from ``to_dict`` output; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GolfError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _parse_value(text: str, hint, key: str):
    origin = typing.get_origin(hint)
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise GolfError(f"{key}: expected a boolean, got {text!r}")
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _parse_value(text, args[0], key)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        return tuple(_parse_value(part, item_type, key) for part in text.split(",") if part.strip())
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if text not in allowed:
            raise GolfError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {text!r}")
        return text
    try:
        return hint(text)
    except (TypeError, ValueError):
        raise GolfError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {text!r}") from None


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted keys an override may name, nested configs included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(valid_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def apply_overrides(config, overrides: list[str]):
    """Return a copy of ``config`` with ``key=value`` overrides applied (dotted keys for nesting)."""
    for item in overrides:
        if "=" not in item:
            raise GolfError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        config = _override(config, key.strip().split("."), text, key.strip())
    return config


def _override(config, path: list[str], text: str, full_key: str):
    hints = typing.get_type_hints(type(config))
    name = path[0]
    if name not in hints or name not in {f.name for f in dataclasses.fields(config)}:
        keys = ", ".join(valid_keys(type(config)))
        raise GolfError(f"unknown config key {full_key!r}; valid keys: {keys}")
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
        if len(path) == 1:
            raise GolfError(f"{full_key!r} is a group; name one of its fields ({full_key}.<field>)")
        value = _override(getattr(config, name), path[1:], text, full_key)
    else:
        if len(path) > 1:
            raise GolfError(f"unknown config key {full_key!r}")
        value = _parse_value(text, hint, full_key)
    try:
        return dataclasses.replace(config, **{name: value})
    except (TypeError, ValueError) as exc:
        raise GolfError(f"{full_key}: {exc}") from None
