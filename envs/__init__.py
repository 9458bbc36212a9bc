"""Market-replay environment: gymnasium Env + batched numba VecEnv on one step kernel.

``import envs`` never imports torch (``data`` <- ``envs``). The one exception is
:class:`MarketReplayVecEnv`, which subclasses stable-baselines3's ``VecEnv`` (SB3 must see an
instance of its own class) and so imports SB3, whose package imports torch; it is therefore
loaded lazily, on first access of ``envs.MarketReplayVecEnv``.
"""

from typing import TYPE_CHECKING, Any

import gymnasium as _gym

from envs.baselines import (
    Baseline,
    BuyAndHoldPolicy,
    FlatPolicy,
    OneBarAheadOracle,
    RandomPolicy,
)
from envs.config import EnvConfig
from envs.env import ENV_ID, MarketReplayEnv
from envs.features import FEATURE_NAMES, compute_features
from envs.kernels import ACCOUNT_NAMES

if TYPE_CHECKING:
    from envs.vec import MarketReplayVecEnv

if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="envs.env:MarketReplayEnv")


def __getattr__(name: str) -> Any:
    if name == "MarketReplayVecEnv":
        from envs.vec import MarketReplayVecEnv

        return MarketReplayVecEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = [
    "ACCOUNT_NAMES",
    "ENV_ID",
    "FEATURE_NAMES",
    "Baseline",
    "BuyAndHoldPolicy",
    "EnvConfig",
    "FlatPolicy",
    "MarketReplayEnv",
    "MarketReplayVecEnv",
    "OneBarAheadOracle",
    "RandomPolicy",
    "compute_features",
]
