"""Sanity baselines: flat earns 0, buy-and-hold the price ratio minus costs, the one-bar-ahead
oracle far more than buy-and-hold, and a random policy about minus its costs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data import chronological_split, synthetic
from envs import (
    BuyAndHoldPolicy,
    EnvConfig,
    FlatPolicy,
    MarketReplayEnv,
    OneBarAheadOracle,
    RandomPolicy,
)
from envs.costs import cost_rates

TEST = EnvConfig(window=32, mode="test")


def _run(env: MarketReplayEnv, policy, rollout) -> tuple[np.ndarray, pd.DataFrame]:
    action = env.config.action
    _, rewards, _, _, truncated = rollout(env, lambda b: policy(b, action))
    assert truncated
    return rewards, env.ledger()


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_flat_earns_exactly_zero(eurusd: pd.DataFrame, rollout, action: str) -> None:
    rewards, ledger = _run(
        MarketReplayEnv(eurusd, TEST.replace(action=action)), FlatPolicy(), rollout
    )
    assert np.all(rewards == 0.0) and np.all(ledger["equity"] == 1.0) and ledger["costs"].sum() == 0


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_buy_and_hold_is_price_ratio_minus_costs(
    eurusd: pd.DataFrame, rollout, action: str
) -> None:
    config = TEST.replace(action=action, commission_bps=3.0)
    env = MarketReplayEnv(eurusd, config)
    rewards, ledger = _run(env, BuyAndHoldPolicy(), rollout)
    k, _ = cost_rates(config)
    ratio = ledger["price"].iloc[-1] / ledger["fill_price"].iloc[0]
    assert abs(rewards.sum() - (np.log(ratio) - np.log1p(k))) < 1e-9
    assert (
        ledger["costs"].iloc[0] == pytest.approx(k / (1 + k))
        and ledger["costs"].iloc[1:].sum() < 1e-15
    )
    assert abs(rewards.sum() - np.log(ratio)) > 1e-5  # the costs are visible


def test_oracle_earns_far_more_than_buy_and_hold(eurusd: pd.DataFrame, rollout) -> None:
    test_split = chronological_split(eurusd).test
    env = MarketReplayEnv(test_split, TEST)
    oracle, _ = _run(env, OneBarAheadOracle(test_split), rollout)
    hold, _ = _run(MarketReplayEnv(test_split, TEST), BuyAndHoldPolicy(), rollout)
    assert oracle.sum() > 0.25 and oracle.sum() > 10 * abs(hold.sum())  # 0.36 vs 0.03
    assert np.mean(oracle > 0) > 0.7  # the future it peeks at is the one it is paid on
    # the same oracle shifted by one bar (peeking at the bar it already saw) earns nothing
    late = OneBarAheadOracle(test_split)
    late._next_move = np.append(0.0, late._next_move[:-1])
    lagged, _ = _run(MarketReplayEnv(test_split, TEST), late, rollout)
    assert lagged.sum() < 0.5 * oracle.sum()


def test_random_policy_loses_about_its_costs(rollout) -> None:
    """Driftless market: gross P&L ~ 0 +- noise, so the net result is about minus the costs."""
    candles = synthetic.gbm(3000, vol=0.002, seed=5)
    config = TEST.replace(commission_bps=4.0)
    env = MarketReplayEnv(candles, config)
    rewards, ledger = _run(env, RandomPolicy(seed=3), rollout)
    pre_trade_equity = ledger["equity"].shift(1, fill_value=1.0)
    cost_drag = -np.log1p(-ledger["costs"] / pre_trade_equity).sum()  # ~ costs / equity
    gross = rewards.sum() + cost_drag
    noise = 0.002 * np.sqrt((ledger["position"] ** 2).sum())
    assert cost_drag > 5 * noise  # costs dominate: the test can tell the two apart
    assert abs(gross) < 4 * noise
    assert rewards.sum() < -0.5 * cost_drag


def test_baseline_actions_shapes() -> None:
    bars = np.array([3, 4, 5])
    assert BuyAndHoldPolicy()(bars).shape == (3, 1) and BuyAndHoldPolicy()(bars).dtype == np.float32
    assert list(BuyAndHoldPolicy()(bars, "discrete")) == [2, 2, 2]
    assert FlatPolicy()(7, "discrete") == 1 and FlatPolicy()(7).shape == (1,)
    a, b = RandomPolicy(seed=1)(bars), RandomPolicy(seed=1)(bars)
    np.testing.assert_array_equal(a, b)
    assert set(RandomPolicy(seed=1, kind="sign")(np.arange(50)).ravel()) == {-1.0, 1.0}
    assert set(RandomPolicy(seed=1, kind="ternary")(np.arange(50), "discrete")) == {0, 1, 2}
    with pytest.raises(ValueError, match="kind"):
        RandomPolicy(kind="gauss")
