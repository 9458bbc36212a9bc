"""Strict config parsing: unknown keys and wrong types fail with the key path named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from experiments.schema import ConfigError, apply_overrides, from_dict, to_dict


@dataclass(frozen=True)
class Inner:
    window: int = 8
    fractions: tuple[float, float] = (0.5, 0.5)
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    algo: Literal["ppo", "sac"] = "ppo"
    rate: float = 0.1
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, Any] = field(default_factory=dict)
    arch: tuple[int, ...] = (4, 4)


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(
        Outer,
        {
            "rate": 1,
            "inner": {"window": 3, "fractions": [0.2, 0.8]},
            "arch": [8],
            "extra": {"phi": 0.3},
        },
    )
    assert cfg == Outer(rate=1.0, inner=Inner(3, (0.2, 0.8)), arch=(8,), extra={"phi": 0.3})
    assert isinstance(cfg.rate, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"inner": {"windw": 3}}, "inner.windw", "unknown key"),
        ({"inner": {"window": "abc"}}, "inner.window", "expected an integer"),
        ({"inner": {"window": 1.5}}, "inner.window", "expected an integer"),
        ({"rate": "fast"}, "rate", "expected a number"),
        ({"rate": True}, "rate", "expected a number"),
        ({"algo": "dqn"}, "algo", "must be one of"),
        ({"inner": {"fractions": [1, 2, 3]}}, "inner.fractions", "2 values"),
        ({"arch": [4, "x"]}, "arch[1]", "expected an integer"),
        ({"inner": 5}, "inner", "expected a mapping"),
        ({"inner": {"window": 0}}, "inner", "window must be >= 1"),
        ({"name": 3}, "name", "expected str"),
    ],
)
def test_errors_name_the_key_path(values: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        from_dict(Outer, values)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_overrides_parse_yaml_values() -> None:
    base = {"inner": {"window": 3}}
    out = apply_overrides(base, ["inner.window=16", "rate=1e-3", "arch=[32, 32]", "inner.tag=a"])
    assert out == {"inner": {"window": 16, "tag": "a"}, "rate": "1e-3", "arch": [32, 32]}
    assert base == {"inner": {"window": 3}}  # the input is not modified
    cfg = from_dict(Outer, out)
    assert (cfg.inner.window, cfg.rate, cfg.arch) == (16, 1e-3, (32, 32))  # YAML 1.1 "1e-3"


def test_bad_override_is_clear() -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        apply_overrides({}, ["window"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"rate": 1.0}, ["rate.x=2"])
