"""Experiment configs: shipped YAML files load; bad keys and types fail with their path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.config import (
    TrainConfig,
    config_from_dict,
    config_to_yaml,
    load_config,
)
from experiments.schema import ConfigError

CONFIGS = sorted((Path(__file__).parents[2] / "experiments" / "configs").glob("*.yaml"))


def test_three_configs_are_shipped() -> None:
    assert {p.stem for p in CONFIGS} >= {"eurusd_ppo", "ar1_ppo", "eurusd_sac"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_round_trips(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS[0], ["seed=7", "env.window=64", "ppo.learning_rate=1e-3"])
    assert (cfg.seed, cfg.env.window, cfg.ppo.learning_rate) == (7, 64, 1e-3)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("env.windw=3", "env.windw"),
        ("env.window=abc", "env.window"),
        ("ppo.n_steps=1.5", "ppo.n_steps"),
        ("algo=dqn", "algo"),
        ("data.fractions=[0.5, 0.5]", "data.fractions"),
        ("env.commission_bps=-1", "env"),
        ("model.plan=3", "model.plan"),
        ("sesd=1", "sesd"),
        ("reward_scale=0", "TrainConfig"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key


def test_missing_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_defaults_are_a_valid_config() -> None:
    assert load_config(None) == TrainConfig()


@pytest.mark.parametrize(
    ("override", "key", "match"),
    [
        ("model.plan={kind: mlkvv, n_layers: 3}", "model.plan", "unknown kind 'mlkvv'"),
        ("model.plan={kind: mha, n_layers: 3}", "model.plan", "missing \\['n_heads'\\]"),
        ("env.window=20", "model.window", "receptive field is 46 bars .* env.window >= 46"),
        ("model.window=60", "model.window", "receptive field is 178 bars"),
        ("model.d_model=60", "model", "divisible by plan.n_heads"),
        ("name=../x", "name", "plain relative name"),
        ("name=/tmp/x", "name", "plain relative name"),
        ("name=a/../../x", "name", "plain relative name"),
    ],
)
def test_bad_model_and_name_fail_at_load(override: str, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [override])
    assert info.value.key == key


def test_model_section_is_typed() -> None:
    from models import KVSharingPlan

    cfg = load_config(None, ["model.plan={kind: cla, n_layers: 4, n_heads: 4, n_kv_heads: 2, "
                             "share_every: 2}", "model.window=8"])
    assert cfg.model.plan == KVSharingPlan.cla(4, 4, 2, 2)
    assert cfg.model.encoder().receptive_field == cfg.model.receptive_field == 2 * 7 + 1
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize("override", ["name=../escape", "model.plan={kind: nope}",
                                      "env.window=8"])
def test_cli_refuses_a_bad_config_before_any_directory(tmp_path: Path, capsys,
                                                       override: str) -> None:
    from experiments.cli import main

    root = tmp_path / "runs"
    rc = main(["train", "--config", str(CONFIGS[0]), "--set", override,
               "--runs-root", str(root), "--no-progress"])
    assert rc == 2 and "error:" in capsys.readouterr().err
    assert not root.exists() and not (tmp_path / "escape").exists()
