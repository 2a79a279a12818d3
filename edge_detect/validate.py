"""Typed config tables: a TOML table into a dataclass, with errors that name the dotted key.

Each config section and each pluggable part (camera source, trigger) is a dataclass;
``from_table`` rejects unknown keys, missing required keys and wrong types, and collects
every problem rather than stopping at the first, so one run of ``check-config`` shows all.
Value checks live in the dataclass's ``check()``, which returns ``{field: problem}``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Iterable, List, Mapping, Type, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more config problems, each ``"dotted.key: what is wrong"``."""

    def __init__(self, errors: List[str], path: str = "") -> None:
        self.errors = list(errors)
        self.path = path
        prefix = f"{path}: " if path else ""
        super().__init__("\n".join(prefix + e for e in self.errors))

    def with_path(self, path: str) -> ConfigError:
        return ConfigError(self.errors, path)


# How a TOML type reads after "must be", and in the plural after "an array of".
_NAMES = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("a boolean", "booleans"), dict: ("a table", "tables")}


def _type_name(t: Any, plural: bool = False) -> str:
    """``t`` in words: "an array of 4 integers"; ``plural``: "arrays of 4 integers"."""
    origin = typing.get_origin(t)
    if origin is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return " or ".join(_type_name(a, plural) for a in args)
    if origin in (list, tuple):
        args = typing.get_args(t)
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed length, e.g. a roi
            inner = f"{len(args)} {_type_name(args[0], True) if len(set(args)) == 1 else 'items'}"
        else:
            inner = _type_name(args[0], True) if args else "items"
        return f"{'arrays' if plural else 'an array'} of {inner}"
    if origin is dict:
        return f"{'tables' if plural else 'a table'} of {_type_name(typing.get_args(t)[1], True)}"
    one, many = _NAMES.get(t, (str(t), str(t)))
    return many if plural else one


def unknown_keys(table: Mapping[str, Any], known: Iterable[str], where: str) -> List[str]:
    """One ``where.key: unknown key (known: ...)`` problem per key of ``table`` not in ``known``."""
    names = sorted(known)
    return [f"{where}.{k}: unknown key (known: {', '.join(names)})" for k in sorted(set(table) - set(names))]


def _check(value: Any, t: Any) -> bool:
    """Whether ``value`` (as TOML parsed it) fits the annotation ``t``."""
    if t is Any:
        return True
    origin = typing.get_origin(t)
    if origin is typing.Union:
        return any(_check(value, a) for a in typing.get_args(t) if a is not type(None))
    if origin is list:
        (inner,) = typing.get_args(t) or (Any,)
        return isinstance(value, list) and all(_check(v, inner) for v in value)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_check(v, args[0]) for v in value)
        return len(value) == len(args) and all(_check(v, a) for v, a in zip(value, args))
    if origin is dict:
        _, inner = typing.get_args(t)
        return isinstance(value, dict) and all(_check(v, inner) for v in value.values())
    if t is float:
        # TOML allows nan, which passes every range check (nan <= 0 is false) and then breaks timers.
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, type):
        return isinstance(value, t)
    return True


def _convert(value: Any, t: Any) -> Any:
    origin = typing.get_origin(t)
    if origin is typing.Union:
        for a in typing.get_args(t):
            if a is not type(None) and _check(value, a):
                return _convert(value, a)
    if origin is tuple:
        return tuple(value)
    if t is float:
        return float(value)
    return value


def from_table(cls: Type[T], table: Any, where: str, skip: tuple = ()) -> T:
    """Build dataclass ``cls`` from a TOML table; raises ConfigError naming ``where.key``.

    skip: field names the caller fills itself (nested tables handled elsewhere).
    """
    if not isinstance(table, Mapping):
        raise ConfigError([f"{where}: must be a table, got {type(table).__name__}"])
    hints = typing.get_type_hints(cls)
    # A field marked internal (metadata={"internal": True}) is set by the code, never by the file.
    fields: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(cls)
                                            if f.init and not f.metadata.get("internal")}
    errors = unknown_keys(table, fields, where)
    kwargs: Dict[str, Any] = {}
    for name, f in fields.items():
        if name in skip:
            continue
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{where}.{name}: required key is missing ({_type_name(hints[name])})")
            continue
        value = table[name]
        if not _check(value, hints[name]):
            errors.append(f"{where}.{name}: must be {_type_name(hints[name])}, got {value!r}")
            continue
        kwargs[name] = _convert(value, hints[name])
    try:
        # With defaults in place of mistyped keys, so that range problems of the other keys are
        # reported in the same run as the type problems.
        obj = cls(**kwargs)
    except (TypeError, ValueError):
        if errors:
            raise ConfigError(errors) from None  # a required key is missing or mistyped: said above
        raise
    check = getattr(obj, "check", None)
    bad = {e.split(":", 1)[0] for e in errors}
    errors += [f"{where}.{k}: {v}" for k, v in (check() if check else {}).items() if f"{where}.{k}" not in bad]
    if errors:
        raise ConfigError(errors)
    return obj
