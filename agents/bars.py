"""Where the fast rollout finds bars: the env's feature array, and encodings of its bars.

A market-replay env slices every observation from one ``[n_bars, F]`` feature array:
``obs["candles"][i] == features[bar_index[i] - T + 1 : bar_index[i] + 1]``. While the
policy's weights are fixed (a whole rollout), a bar's encoding depends on nothing but the
features, so :class:`RolloutEncodings` encodes each env's upcoming bars a chunk at a time in
one batched ``encode_series`` pass and the rollout looks them up by bar index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from .extractor import CANDLES_KEY
from .policy import MLKVActorCriticPolicy

__all__ = ["BarSource", "RolloutEncodings"]


class BarSource:
    """Reads ``features`` and ``bar_index`` from a VecEnv (or the envs inside a DummyVecEnv).

    Args:
        env: the vec env; it is asked for attributes ``features`` (``[n_bars, F]`` float32)
            and ``bar_index`` (``[n_envs]`` int), directly or through ``get_attr``.
        features: the feature array read from it.
    """

    def __init__(self, env: VecEnv, features: np.ndarray) -> None:
        self.env = env
        self.features = features

    @classmethod
    def from_env(cls, env: VecEnv | None) -> tuple[BarSource | None, str]:
        """The env's bar source, or ``(None, reason)`` when it does not expose one."""
        if env is None:
            return None, "no env is set"
        features = _read(env, "features")
        if features is None:
            return None, "the env has no `features` attribute"
        if _read(env, "bar_index") is None:
            return None, "the env has no `bar_index` attribute"
        features = np.asarray(features)
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            return None, f"env.features is not a [n_bars, F] float array (shape {features.shape})"
        return cls(env, features), ""

    def bar_index(self) -> np.ndarray:
        """``[n_envs]`` int64: the last bar of each env's current observation."""
        return np.array(_read(self.env, "bar_index"), dtype=np.int64).reshape(-1)  # a copy

    def windows_match(self, obs: dict[str, np.ndarray], bar_index: np.ndarray) -> bool:
        """Whether ``obs["candles"]`` is exactly the feature windows ending at ``bar_index``."""
        candles = obs[CANDLES_KEY]  # [n_envs, T, F]
        T = candles.shape[1]
        if candles.shape[2] != self.features.shape[1] or bar_index.min() < T - 1:
            return False
        if bar_index.max() >= self.features.shape[0]:
            return False
        index = bar_index[:, None] + np.arange(-T + 1, 1)[None, :]  # [n_envs, T]
        return bool(np.array_equal(candles, self.features[index]))

    def last_bars_match(self, obs: dict[str, np.ndarray], bar_index: np.ndarray) -> bool:
        """Cheap per-step check: each window's last bar is ``features[bar_index]``."""
        return bool(np.array_equal(obs[CANDLES_KEY][:, -1], self.features[bar_index]))


def _read(env: VecEnv, name: str) -> Any:
    """``env.<name>``, else the first env's attribute via ``get_attr`` (all envs for bars)."""
    value = getattr(env, name, None)
    if value is not None:
        return value
    try:
        values = env.get_attr(name)
    except AttributeError:
        return None
    if name == "bar_index":
        return np.asarray(values, dtype=np.int64).reshape(-1)
    if any(v is not values[0] and not np.array_equal(v, values[0]) for v in values[1:]):
        return None  # the envs replay different data: no single feature array
    return values[0]


class RolloutEncodings:
    """Encodings of the bars each env visits during one rollout (fixed weights, no grad).

    Each env owns a chunk of encoded bars ``[start, start + length)``. A lookup for a bar
    outside its env's chunk encodes a new chunk from that bar on, of ``min(chunk,
    horizon, n_bars - bar)`` bars (``horizon`` = bars the rollout can still reach); all envs
    that need a new chunk at the same step share one batched pass. Envs step one bar at a
    time, so between episode resets each bar is encoded once (plus ``receptive_field - 1``
    bars of context per chunk).

    Args:
        policy: the policy (its extractors encode the bars).
        features: ``[n_bars, F]`` on the policy's device.
        n_envs: number of envs.
        chunk: longest chunk in bars.
    """

    def __init__(
        self, policy: MLKVActorCriticPolicy, features: th.Tensor, n_envs: int, chunk: int
    ) -> None:
        self.policy = policy
        self.features = features
        self.chunk = int(chunk)
        self.start = np.full(n_envs, -1, dtype=np.int64)
        self.length = np.zeros(n_envs, dtype=np.int64)
        self.table = th.zeros(
            n_envs, self.chunk, policy.encoding_dim, device=features.device
        )  # [n_envs, chunk, D]
        self.bars_encoded = 0  # bars encoded so far, context included (for benchmarks)

    def lookup(self, bar_index: np.ndarray, horizon: int) -> th.Tensor:
        """Encodings of each env's bar: ``[n_envs] -> [n_envs, D]``.

        Args:
            bar_index: ``[n_envs]`` current bar of each env.
            horizon: how many bars from ``bar_index`` on the rollout may still look up.
        """
        offset = bar_index - self.start  # [n_envs]
        miss = (self.start < 0) | (offset < 0) | (offset >= self.length)
        if miss.any():
            envs = np.flatnonzero(miss)
            first = bar_index[envs]
            n_bars = self.features.shape[0]
            lengths = np.minimum(np.minimum(self.chunk, max(int(horizon), 1)), n_bars - first)
            with th.no_grad():
                encoded = self.policy.encode_spans(self.features, first, lengths)  # [E, L, D]
            self.table[th.as_tensor(envs, device=self.table.device), : encoded.shape[1]] = encoded
            self.start[envs] = first
            self.length[envs] = lengths
            self.bars_encoded += int(lengths.sum()) + len(envs) * (self.policy.receptive_field - 1)
            offset = bar_index - self.start
        rows = th.arange(len(bar_index), device=self.table.device)
        return self.table[rows, th.as_tensor(offset, device=self.table.device)]  # [n_envs, D]
