"""Small markets and untrained MLKV policies shared by the evaluation tests."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from agents import MLKVActorCriticPolicy
from data import synthetic
from envs import EnvConfig, MarketReplayVecEnv

ENV = EnvConfig(window=16, episode_length=64)
ENCODER = {"d_model": 16, "window": 4,
           "plan": {"kind": "mlkv", "n_layers": 3, "n_heads": 2, "n_kv_heads": 1,
                    "n_kv_layers": 3}}


def make_policy(seed: int = 0, env: EnvConfig = ENV) -> MLKVActorCriticPolicy:
    """An untrained MLKV policy for ``env``'s spaces (receptive field 10 <= window 16)."""
    torch.manual_seed(seed)
    venv = MarketReplayVecEnv(synthetic.gbm(300, seed=0), env, n_envs=1)
    return MLKVActorCriticPolicy(venv.observation_space, venv.action_space, lambda _: 1e-3,
                                 encoder=ENCODER, account_hidden=(8,), net_arch=[16])


@pytest.fixture(scope="session")
def test_candles() -> pd.DataFrame:
    return synthetic.gbm(160, seed=11)
