"""MarketReplayEnv: API checks, observation/accounting invariants, episodes, errors."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

from data import synthetic
from envs import ACCOUNT_NAMES, ENV_ID, FEATURE_NAMES, EnvConfig, MarketReplayEnv, RandomPolicy
from envs.costs import cost_rates
from envs.features import FIRST_VALID
from envs.kernels import M_SCALE

SMALL = EnvConfig(window=16, episode_length=50)
CONFIGS = {
    "default_costs": SMALL,
    "financing_leverage": SMALL.replace(financing_bps_per_bar=0.4, max_position=3.0),
    "discrete_test": SMALL.replace(action="discrete", mode="test", commission_bps=2.0),
    "no_costs": SMALL.replace(commission_bps=0, half_spread_bps=0, slippage_bps=0),
}


def _random_policy(config: EnvConfig, seed: int = 1):
    rng = RandomPolicy(seed)
    return lambda bar: rng(bar, config.action)


# ---------------------------------------------------------------------- API checks
@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_gymnasium_check_env_passes_without_warnings(gbm: pd.DataFrame, action: str) -> None:
    env = gym.make(ENV_ID, candles=gbm, config=SMALL.replace(action=action))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_sb3_check_env_passes(gbm: pd.DataFrame, action: str) -> None:
    """SB3's checker passes; its only remark is the documented one about the 2-D window.

    SB3 recommends flattening any Box that is neither 1-D nor an image; the (T, F) candle
    window is 2-D by design (the project's MLKV features extractor reads it), so that one
    recommendation is expected. Any other warning fails the test.
    """
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = MarketReplayEnv(gbm, SMALL.replace(action=action))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True)
    messages = [str(w.message) for w in caught]
    expected = [
        m for m in messages if m.startswith("Your observation candles has an unconventional")
    ]
    assert len(expected) == 1
    assert [m for m in messages if m not in expected] == []


def test_spaces(gbm: pd.DataFrame) -> None:
    env = MarketReplayEnv(gbm, SMALL)
    assert env.observation_space["candles"].shape == (16, len(FEATURE_NAMES))
    assert env.observation_space["account"].shape == (len(ACCOUNT_NAMES),) == (8,)
    assert env.action_space == gym.spaces.Box(-1, 1, (1,), np.float32)
    assert MarketReplayEnv(gbm, SMALL.replace(action="discrete")).action_space.n == 3


def test_import_envs_does_not_import_torch() -> None:
    code = (
        "import sys, envs, data; envs.MarketReplayEnv; envs.compute_features;"
        "assert 'torch' not in sys.modules, 'envs imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- observations
@pytest.mark.parametrize("name", list(CONFIGS))
def test_observation_is_the_features_slice(gbm: pd.DataFrame, rollout, name: str) -> None:
    config = CONFIGS[name]
    env = MarketReplayEnv(gbm, config)
    obs, info = env.reset(seed=3)
    T = config.window
    for _ in range(40):
        b = env.bar_index
        assert b - T + 1 >= env.first_valid >= FIRST_VALID
        np.testing.assert_array_equal(obs["candles"], env.features[b - T + 1 : b + 1])
        assert obs["candles"].flags["C_CONTIGUOUS"] and obs["candles"].flags["WRITEABLE"]
        assert info["time"] == gbm.index[b]
        assert obs in env.observation_space
        obs, _, term, trunc, info = env.step(env.action_space.sample())
        if term or trunc:
            break


def test_account_reports_position_and_pnl(gbm: pd.DataFrame) -> None:
    env = MarketReplayEnv(gbm, SMALL.replace(max_position=2.0))
    obs, _ = env.reset(seed=0)
    assert np.all(obs["account"][:4] == 0)
    scale = env.market.market[:, M_SCALE] * 2.0  # ATR/close * max_position
    for k in range(1, 6):
        obs, _, _, _, info = env.step(np.array([0.5], np.float32))
        account = obs["account"]
        assert info["position"] == pytest.approx(1.0, rel=0.02)  # 0.5 * max_position, drifting
        assert account[0] == pytest.approx(info["position"] / 2.0, rel=1e-6)
        z = np.log(info["equity"]) / (scale[env.bar_index] * np.sqrt(k))
        assert account[1] == pytest.approx(z, rel=1e-5)  # opened at the start: same as ...
        assert account[2] == pytest.approx(z, rel=1e-5)  # ... the episode's equity change
        assert account[3] == pytest.approx(k / (k + 16))  # bars held / (bars + T)
    equity_at_flip = info["equity"]
    for k in range(1, 4):  # flip short: the position's clock restarts at the flip's decision
        obs, _, _, _, info = env.step(np.array([-1.0], np.float32))
        z = np.log(info["equity"] / equity_at_flip) / (scale[env.bar_index] * np.sqrt(k))
        assert obs["account"][1] == pytest.approx(z, rel=1e-5)
        assert obs["account"][3] == pytest.approx(k / (k + 16))
    obs, _, _, _, _ = env.step(np.zeros(1))
    assert obs["account"][0] == obs["account"][1] == obs["account"][3] == 0.0


# ---------------------------------------------------------------------- accounting
@pytest.mark.parametrize("name", list(CONFIGS))
def test_reward_sums_to_log_equity_ratio(gbm: pd.DataFrame, rollout, name: str) -> None:
    config = CONFIGS[name]
    env = MarketReplayEnv(gbm, config)
    _, rewards, infos, _, truncated = rollout(env, _random_policy(config), seed=5)
    assert truncated
    total = np.log(infos[-1]["equity"] / config.initial_equity)
    assert abs(rewards.sum() - total) < 1e-9
    assert abs(env.ledger()["reward"].sum() - total) < 1e-9
    assert not np.isclose(rewards[:-1].sum(), total, rtol=0, atol=1e-9)  # the check can fail


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ledger_reconciles_with_equity(gbm: pd.DataFrame, rollout, name: str) -> None:
    config = CONFIGS[name]
    env = MarketReplayEnv(gbm, config)
    _, rewards, infos, _, _ = rollout(env, _random_policy(config, seed=9), seed=2)
    ledger = env.ledger()
    k, f = cost_rates(config)
    start = env.bar_index - len(ledger)
    assert len(ledger) == len(rewards)
    assert list(ledger.columns[:6]) == ["time", "price", "fill_price", "position", "fill", "units"]
    np.testing.assert_array_equal(ledger["time"], gbm.index[start + 1 : env.bar_index + 1])
    equity, units, close = config.initial_equity, 0.0, gbm["close"].iloc[start]
    for row in ledger.itertuples():
        pre = equity + units * (row.fill_price - close)  # gap P&L of the old position
        traded = row.fill * pre
        held = units * row.fill_price + traded
        assert row.costs == pytest.approx(k * abs(traded) + f * abs(held), rel=1e-9, abs=1e-15)
        assert held == pytest.approx(row.position * (pre - row.costs), rel=1e-9, abs=1e-12)
        assert row.units == pytest.approx(held / row.fill_price, rel=1e-12, abs=1e-15)
        previous, equity = equity, pre - row.costs + row.units * (row.price - row.fill_price)
        assert row.equity == pytest.approx(equity, rel=1e-12)
        assert row.reward == pytest.approx(np.log(row.equity / previous), abs=1e-12)
        units, close = row.units, row.price
    assert infos[-1]["equity"] == pytest.approx(equity, rel=1e-12)
    assert np.sum([i["cost"] for i in infos]) == pytest.approx(ledger["costs"].sum(), rel=1e-12)


def test_info_carries_equity_position_cost_time(gbm: pd.DataFrame) -> None:
    env = MarketReplayEnv(gbm, SMALL)
    _, info = env.reset(seed=0)
    assert info == {"equity": 1.0, "position": 0.0, "cost": 0.0, "time": gbm.index[env.bar_index]}
    _, _, _, _, info = env.step(np.array([-1.0], np.float32))
    assert info["cost"] == pytest.approx(1e-4 / (1 + 1e-4))  # 1 bp of the post-cost notional
    assert info["position"] == pytest.approx(-1.0, abs=0.01)
    assert info["time"] == gbm.index[env.bar_index]


# ---------------------------------------------------------------------- episodes
def test_same_seed_same_episode(gbm: pd.DataFrame, rollout) -> None:
    a = rollout(MarketReplayEnv(gbm, SMALL), _random_policy(SMALL, 4), seed=123)
    b = rollout(MarketReplayEnv(gbm, SMALL), _random_policy(SMALL, 4), seed=123)
    c = rollout(MarketReplayEnv(gbm, SMALL), _random_policy(SMALL, 4), seed=124)
    for oa, ob in zip(a[0], b[0], strict=True):
        np.testing.assert_array_equal(oa["candles"], ob["candles"])
        np.testing.assert_array_equal(oa["account"], ob["account"])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2][0]["time"] != c[2][0]["time"]  # another seed, another start


def test_train_starts_cover_the_allowed_range(gbm: pd.DataFrame) -> None:
    env = MarketReplayEnv(gbm, SMALL)
    env.reset(seed=0)
    starts = {env.reset()[1]["time"] for _ in range(300)}
    first = FIRST_VALID + SMALL.window - 1
    last = len(gbm) - 1 - SMALL.episode_length
    positions = gbm.index.get_indexer(sorted(starts))
    assert positions.min() == first and positions.max() == last


def test_test_mode_walks_the_whole_split_deterministically(gbm: pd.DataFrame, rollout) -> None:
    config = SMALL.replace(mode="test")
    env = MarketReplayEnv(gbm, config)
    _, rewards, infos, terminated, truncated = rollout(env, lambda b: np.ones(1), seed=None)
    first = FIRST_VALID + config.window - 1
    assert infos[0]["time"] == gbm.index[first] and infos[-1]["time"] == gbm.index[-1]
    assert len(rewards) == len(gbm) - 1 - first and truncated and not terminated
    again = rollout(MarketReplayEnv(gbm, config), lambda b: np.ones(1), seed=99)
    np.testing.assert_array_equal(rewards, again[1])


def test_episode_end_truncates_and_step_after_end_raises(gbm: pd.DataFrame) -> None:
    env = MarketReplayEnv(gbm, SMALL.replace(episode_length=3))
    env.reset(seed=0)
    flags = [env.step(np.zeros(1))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1))


def _crash_market(gap: bool) -> pd.DataFrame:
    """Calm GBM, then one bar whose price triples (at the open if ``gap``, else intrabar)."""
    candles = synthetic.gbm(200, vol=0.001, seed=0).copy()
    o, c = candles["open"].to_numpy().copy(), candles["close"].to_numpy().copy()
    jump = 150
    if gap:
        o[jump:] *= 3.0
        c[jump:] *= 3.0
    else:
        o[jump + 1 :] *= 3.0
        c[jump:] *= 3.0
    candles["open"], candles["close"] = o, c
    candles["high"] = np.maximum(candles["high"] * (3.0 if gap else 1.0), np.maximum(o, c))
    candles.loc[candles.index[jump + 1 :], "high"] = np.maximum(o, c)[jump + 1 :] * 1.001
    candles["low"] = np.minimum(np.minimum(o, c) * 0.999, candles["low"] * 3.0)
    candles["low"] = np.minimum(candles["low"], np.minimum(o, c))
    return candles


@pytest.mark.parametrize("gap", [True, False])
def test_ruin_terminates_with_floored_equity(rollout, gap: bool) -> None:
    config = EnvConfig(window=16, mode="test")
    env = MarketReplayEnv(_crash_market(gap), config)
    _, rewards, infos, terminated, truncated = rollout(env, lambda b: -np.ones(1))
    assert terminated and not truncated
    assert infos[-1]["time"] == env.market.index[150]
    assert infos[-1]["equity"] == pytest.approx(1e-9) and infos[-1]["position"] == 0.0
    assert abs(rewards.sum() - np.log(1e-9)) < 1e-9
    assert env.ledger()["equity"].iloc[-1] == pytest.approx(1e-9)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "action",
    [
        np.array([np.nan]),
        np.array([np.inf], np.float32),
        np.zeros(2),
        np.zeros((1, 1)),
        "long",
        None,
    ],
)
def test_bad_continuous_actions_raise(gbm: pd.DataFrame, action: object) -> None:
    env = MarketReplayEnv(gbm, SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="invalid action"):
        env.step(action)
    env.step(np.array([7.0]))  # out of range is clipped, not an error
    assert env.ledger()["position"].iloc[-1] == 1.0


@pytest.mark.parametrize("action", [3, -1, 1.0, np.array([0.5]), True, np.array([0, 1])])
def test_bad_discrete_actions_raise(gbm: pd.DataFrame, action: object) -> None:
    env = MarketReplayEnv(gbm, SMALL.replace(action="discrete"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\{0, 1, 2\}"):
        env.step(action)
    env.step(np.int64(2))
    env.step(np.array([0]))
    assert list(env.ledger()["position"]) == [1.0, -1.0]


def test_step_before_reset_raises(gbm: pd.DataFrame) -> None:
    with pytest.raises(RuntimeError, match="reset"):
        MarketReplayEnv(gbm, SMALL).step(np.zeros(1))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (EnvConfig(window=400), "window=400"),
        (EnvConfig(window=16, episode_length=380), "episode_length=380"),
        (EnvConfig(window=350, mode="test"), "window=350"),
    ],
)
def test_data_too_short_for_config_raises(gbm: pd.DataFrame, config: EnvConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MarketReplayEnv(gbm, config)


def test_bad_config_and_candles_raise(gbm: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="commission_bps"):
        MarketReplayEnv(gbm, {"commission_bps": -1})
    with pytest.raises(ValueError, match="unknown EnvConfig key"):
        MarketReplayEnv(gbm, {"lookback": 3})
    bad = gbm.copy()
    bad.iloc[10, bad.columns.get_loc("high")] = 0.5
    with pytest.raises(ValueError, match="high"):
        MarketReplayEnv(bad, SMALL)


def test_ledger_can_be_switched_off(gbm: pd.DataFrame, rollout) -> None:
    config = SMALL.replace(record_ledger=False)
    on = rollout(MarketReplayEnv(gbm, SMALL), _random_policy(SMALL), seed=1)
    env = MarketReplayEnv(gbm, config)
    off = rollout(env, _random_policy(config), seed=1)
    np.testing.assert_array_equal(on[1], off[1])  # same episode, same rewards
    with pytest.raises(RuntimeError, match="record_ledger"):
        env.ledger()
