"""Build frozen config dataclasses from plain dicts (YAML), strictly.

Unknown keys and wrong types fail before anything runs, naming the full key path
(``env.window: expected int, got 'abc' (str)``). ``--set a.b=value`` overrides are applied to
the dict first; values are parsed with ``yaml.safe_load`` so ``--set algo.ppo.n_steps=256``
gives an int and ``--set data.fractions=[0.8,0.1,0.1]`` a list.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; ``.key`` is its path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


def from_dict(cls: type[T], values: dict[str, Any] | None, key: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``values`` (recursively), checking keys and types.

    Missing keys take the dataclass defaults. ``__post_init__`` errors (range checks) are
    re-raised as :class:`ConfigError` naming the section's key path.
    """
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(key, f"expected a mapping of {cls.__name__} fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            _join(key, unknown[0]),
            f"unknown key; valid keys here are: {', '.join(sorted(fields))}",
        )
    kwargs = {name: _convert(hints[name], v, _join(key, name)) for name, v in values.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(key or cls.__name__, str(err)) from err


def to_dict(config: Any) -> Any:
    """Plain, YAML-safe dict of a (nested) config dataclass (tuples become lists).

    Values with a ``to_dict`` method of their own (a :class:`~models.KVSharingPlan`, a
    :class:`~models.PKMConfig`) are written in that form, which their ``from_dict`` reads.
    """
    if hasattr(config, "to_dict") and not isinstance(config, type):
        return to_dict(config.to_dict())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a nested dict (a copy); values parsed as YAML."""
    out = _deep_copy(values)
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError("--set", f"expected key.path=value, got {item!r}")
        node = out
        parts = path.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _own_format(tp: Any, value: dict[str, Any]) -> bool:
    """Whether the class reads ``value`` with its own ``from_dict`` rather than field by field:
    classes with a ``from_dict`` that are not dataclasses with defaults for every field (a
    plan is written ``{kind: mlkv, n_layers: 9, ...}``, not as its ``kv_source``)."""
    if not (isinstance(tp, type) and hasattr(tp, "from_dict")):
        return False
    if not dataclasses.is_dataclass(tp):
        return True
    missing = dataclasses.MISSING
    return any(
        f.init and f.default is missing and f.default_factory is missing
        for f in dataclasses.fields(tp)
    )


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if isinstance(value, dict) and _own_format(tp, value):  # e.g. KVSharingPlan {kind: ...}
        try:
            return tp.from_dict(value)
        except (ValueError, TypeError) as err:
            raise ConfigError(key, str(err)) from err
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {len(value)}")
        return tuple(
            _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {k: _convert(vt, v, _join(key, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 1e5 in YAML is a float
            raise ConfigError(key, f"expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(
                key, f"expected {tp.__name__}, got {value!r} ({type(value).__name__})"
            )
        return value
    return value
