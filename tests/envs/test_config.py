"""EnvConfig: defaults, validation errors that name the field, dict round trip."""

from __future__ import annotations

import dataclasses

import pytest

from envs import EnvConfig


def test_defaults_match_the_contract() -> None:
    cfg = EnvConfig()
    assert (cfg.window, cfg.episode_length, cfg.mode, cfg.action) == (
        128,
        512,
        "train",
        "continuous",
    )
    assert (cfg.financing_bps_per_bar, cfg.initial_equity, cfg.max_position) == (0.0, 1.0, 1.0)
    assert cfg.trade_cost_bps == pytest.approx(1.0)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EnvConfig().window = 3  # type: ignore[misc]


def test_dict_round_trip() -> None:
    cfg = EnvConfig(window=32, mode="test", action="discrete", commission_bps=2.5)
    assert EnvConfig.from_dict(cfg.to_dict()) == cfg
    assert EnvConfig.from_dict({"window": 64}) == EnvConfig(window=64)
    assert EnvConfig.from_dict(None) == EnvConfig()


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"'windw'.*allowed keys: window"):
        EnvConfig.from_dict({"windw": 32})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window", 0),
        ("window", 12.0),
        ("window", True),
        ("episode_length", -5),
        ("mode", "live"),
        ("action", "box"),
        ("commission_bps", -0.1),
        ("half_spread_bps", float("nan")),
        ("slippage_bps", float("inf")),
        ("financing_bps_per_bar", -1.0),
        ("initial_equity", 0.0),
        ("max_position", -1.0),
        ("record_ledger", 1),
    ],
)
def test_bad_field_raises_naming_it(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        EnvConfig(**{field: value})


def test_costs_that_could_eat_all_equity_are_refused() -> None:
    with pytest.raises(ValueError, match="max_position"):
        EnvConfig(max_position=100.0, commission_bps=60.0)
    EnvConfig(max_position=100.0, commission_bps=1.0)  # 100x leverage at 1.7 bp is fine
