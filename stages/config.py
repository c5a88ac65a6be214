"""Typed configs: frozen dataclasses whose fields are documented by the string under each one.

Overrides come as ``key=value`` strings (``model.num_layers=6``) and are parsed with the field's
own type. An unknown key is an error that lists the valid ones: the record scripts' silently
ignored environment variables are exactly what this replaces. Each numeric field declares the
range it accepts (``stages/ranges.py``); a value outside it is a ``ConfigError`` (a GolfError)
naming the dotted field, whether it came from an override, a manifest or a checkpoint. A config
may name its renamed fields (``RENAMED``, old name -> new dotted key): an old key is refused in
one line that names the new one.
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
from .ranges import ConfigError


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


def from_dict(cls: type, data: dict, where: str = ""):
    """Rebuild a config from ``to_dict`` output (a manifest, a checkpoint); unknown keys and values
    outside a field's range are errors naming the dotted field, led by ``where`` (the file) if given."""
    try:
        return _from_dict(cls, data)
    except GolfError as exc:
        if not where:
            raise
        raise GolfError(f"{where}: {exc}") from None


def _from_dict(cls: type, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    renamed = [f"{prefix}{old} is now {prefix}{_renamed(cls)[old]}" for old in unknown if old in _renamed(cls)]
    if renamed:
        raise GolfError(f"{cls.__name__}: renamed field(s): {', '.join(renamed)}")
    if unknown:
        raise GolfError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            try:
                value = _from_dict(hint, value, f"{prefix}{name}.")
            except ConfigError as exc:
                raise exc.under(name) from None
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def check_scoring_window(config, seq_len: str, tokens: str, stride: str | None = None,
                         length: int | None = None) -> None:
    """The cross-field rule of every scoring setup, given its field names: the stride fits in the
    window, and a token prefix holds at least one whole window (else there is nothing to score).
    An unset window length (None: the training one) is checked where it is known, not here: the
    stage passes it as ``length``."""
    length = getattr(config, seq_len) or length
    if length is None:
        return
    step = getattr(config, stride) if stride else None
    if step is not None and step > length:
        raise ConfigError(stride, f"must be at most {seq_len} {length}, got {step}")
    count = getattr(config, tokens)
    if 0 < count < length:
        raise ConfigError(tokens, f"must be 0 (all) or at least {seq_len} {length}, got {count}")


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
        if not text.strip():  # a typo or an unset shell variable must not lift a limit silently
            raise GolfError(f"{key}: empty value; write {key}=none to unset it")
        if text.strip().lower() in ("none", "null"):
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
    """Return a copy of ``config`` with ``key=value`` overrides applied (dotted keys for nesting).

    All overrides are parsed first and each config is rebuilt once, so that rules relating two
    fields see the final values whatever order the overrides come in (a later repeat of a key wins).
    """
    changes: dict = {}
    for item in overrides:
        if "=" not in item:
            raise GolfError(f"override {item!r} is not of the form key=value")
        key, text = (part.strip() for part in item.split("=", 1))
        _collect(type(config), key.split("."), text, key, changes)
    return _rebuild(config, changes)


def _collect(cls: type, path: list[str], text: str, full_key: str, changes: dict) -> None:
    """Parse one override into ``changes``, a nested {field: value or {field: ...}} dict."""
    hints = typing.get_type_hints(cls)
    name = path[0]
    if name in _renamed(cls):
        new = full_key.removesuffix(".".join(path)) + _renamed(cls)[name]
        raise GolfError(f"config key {full_key!r} was renamed: use {new!r}")
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise GolfError(f"unknown config key {full_key!r}; valid keys: {', '.join(valid_keys(cls))}")
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
        if len(path) == 1:
            raise GolfError(f"{full_key!r} is a group; name one of its fields ({full_key}.<field>)")
        _collect(hint, path[1:], text, full_key, changes.setdefault(name, {}))
    elif len(path) > 1:
        raise GolfError(f"unknown config key {full_key!r}")
    else:
        changes[name] = _parse_value(text, hint, full_key)


def _renamed(cls: type) -> dict[str, str]:
    """A config's renamed fields: old name -> its new key, dotted from the config (``RENAMED``)."""
    return getattr(cls, "RENAMED", {})


def _rebuild(config, changes: dict):
    """``config`` with ``changes`` applied, nested groups first; errors name the dotted field."""
    values = {}
    for name, change in changes.items():
        if isinstance(change, dict):
            try:
                change = _rebuild(getattr(config, name), change)
            except ConfigError as exc:
                raise exc.under(name) from None
        values[name] = change
    return dataclasses.replace(config, **values)
