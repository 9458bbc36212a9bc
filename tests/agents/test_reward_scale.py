"""ScaledReward: rewards times a constant, everything else (incl. MLKVPPO's fast path) intact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from agents import MLKVPPO, BarRolloutBuffer, MLKVActorCriticPolicy, PlainPathWarning, ScaledReward
from data import synthetic
from envs import EnvConfig, MarketReplayVecEnv

CANDLES = synthetic.ar1(600, phi=0.3, seed=0)
CONFIG = EnvConfig(window=8, episode_length=24)


def venv() -> MarketReplayVecEnv:
    return MarketReplayVecEnv(CANDLES, CONFIG, n_envs=3, seed=7)


def test_rewards_are_scaled_and_nothing_else_changes() -> None:
    plain, scaled = venv(), ScaledReward(venv(), 100.0)
    obs_a, obs_b = plain.reset(), scaled.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 3, 1)).astype(np.float32)
    ended = 0
    for action in actions:  # 40 steps cross the 24-step episode ends
        obs_a, r_a, d_a, i_a = plain.step(action)
        obs_b, r_b, d_b, i_b = scaled.step(action)
        np.testing.assert_allclose(r_b, 100.0 * r_a, rtol=1e-6)
        np.testing.assert_array_equal(d_b, d_a)
        for key in obs_a:
            np.testing.assert_array_equal(obs_b[key], obs_a[key])
        assert [i.get("equity") for i in i_b] == [i.get("equity") for i in i_a]
        np.testing.assert_array_equal(scaled.equity, plain.equity)  # attributes pass through
        ended += int(d_a.sum())
    assert ended >= 3  # every env crossed an episode end


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="reward_scale must be a finite number > 0"):
        ScaledReward(venv(), scale)


def test_ppo_keeps_the_fast_path_and_stores_scaled_rewards(tiny_encoder) -> None:
    def rollout_rewards(env) -> np.ndarray:
        model = MLKVPPO(MLKVActorCriticPolicy, env, n_steps=40, batch_size=20, n_epochs=1,
                        gamma=0.0, seed=1, policy_kwargs={"encoder": tiny_encoder})
        _, callback = model._setup_learn(120)
        with warnings.catch_warnings():
            warnings.simplefilter("error", PlainPathWarning)
            model.collect_rollouts(model.env, callback, model.rollout_buffer, 40)
        assert isinstance(model.rollout_buffer, BarRolloutBuffer)
        return model.rollout_buffer.rewards.copy()

    # gamma 0: no value bootstrap at truncations, so stored rewards are the env's exactly
    np.testing.assert_allclose(rollout_rewards(ScaledReward(venv(), 50.0)),
                               50.0 * rollout_rewards(venv()), rtol=1e-5, atol=1e-9)
