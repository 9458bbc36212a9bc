"""Shared fixtures for the environment tests: small markets and a rollout helper."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from data import datasets, synthetic
from envs import MarketReplayEnv


@pytest.fixture(scope="session")
def eurusd() -> pd.DataFrame:
    """The embedded EURUSD H1 2017 candles (6,225 bars)."""
    return datasets.load("eurusd_h1")


@pytest.fixture(scope="session")
def gbm() -> pd.DataFrame:
    """A driftless GBM market of 400 bars (no edge anywhere)."""
    return synthetic.gbm(400, vol=0.002, seed=11)


Policy = Callable[[int], object]


def _rollout(env: MarketReplayEnv, policy: Policy, seed: int | None = 0, max_steps: int = 10**7):
    """Run one episode; returns (observations, rewards, infos, terminated, truncated)."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    terminated = truncated = False
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(policy(env.bar_index))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return observations, np.array(rewards), infos, terminated, truncated


@pytest.fixture
def rollout() -> Callable[..., tuple]:
    """``rollout(env, policy, seed=0)``: one episode with ``policy(bar_index) -> action``."""
    return _rollout
