"""Sanity baselines: tiny fixed policies for tests and for the evaluator's null comparisons.

Each baseline maps the decision bars of one or many envs (``env.bar_index``, an int or an
int64 ``[N]`` array) to actions, so it runs side by side with a learned policy in a
``MarketReplayVecEnv``:

>>> policy = BuyAndHoldPolicy()
>>> actions = policy(vec.bar_index)            # float32 [N, 1] for Box actions
>>> actions = policy(vec.bar_index, "discrete")  # int64 [N] for Discrete(3)

Targets are positions in [-1, 1] (times ``max_position`` in the env); for a discrete env they
are rounded to {-1, 0, 1} and sent as codes {0, 1, 2} (short, flat, long).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pandas as pd

from envs.kernels import M_CLOSE, M_OPEN, MarketArrays


class Baseline(ABC):
    """A fixed rule from decision bars to target positions."""

    name: str = "baseline"

    @abstractmethod
    def positions(self, bar_index: np.ndarray) -> np.ndarray:
        """Target positions in [-1, 1], float64 ``[N]``, for observations ending at
        ``bar_index`` (int64 ``[N]``)."""

    def __call__(self, bar_index: int | np.ndarray, action: str = "continuous") -> Any:
        """Actions for envs whose observations end at ``bar_index``.

        Args:
            bar_index: an int (one env: returns one action) or an int array ``[N]``.
            action: the env's ``config.action``: "continuous" or "discrete".

        Returns:
            continuous: float32 ``(1,)`` for an int, ``[N, 1]`` for an array;
            discrete: an int code for an int, int64 ``[N]`` for an array.
        """
        if action not in ("continuous", "discrete"):
            raise ValueError(f"action must be 'continuous' or 'discrete', got {action!r}.")
        single = np.ndim(bar_index) == 0
        bars = np.atleast_1d(np.asarray(bar_index, dtype=np.int64))
        pos = np.clip(self.positions(bars), -1.0, 1.0)
        if action == "discrete":
            codes = np.rint(pos).astype(np.int64) + 1
            return int(codes[0]) if single else codes
        acts = pos.astype(np.float32).reshape(-1, 1)
        return acts[0] if single else acts

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FlatPolicy(Baseline):
    """Never holds a position: earns exactly 0 and pays no cost."""

    name = "flat"

    def positions(self, bar_index: np.ndarray) -> np.ndarray:
        return np.zeros(bar_index.shape[0])


class BuyAndHoldPolicy(Baseline):
    """Long 1.0 from the first bar on: earns the price ratio minus one entry cost."""

    name = "buy_and_hold"

    def positions(self, bar_index: np.ndarray) -> np.ndarray:
        return np.ones(bar_index.shape[0])


class RandomPolicy(Baseline):
    """Random positions with no information, from its own seeded generator.

    Args:
        seed: seed of the generator (same seed, same sequence of calls -> same actions).
        kind: "uniform" (U[-1, 1]), "sign" (+-1 with equal odds) or "ternary" ({-1, 0, 1}).
    """

    name = "random"

    def __init__(self, seed: int | None = 0, kind: str = "uniform") -> None:
        if kind not in ("uniform", "sign", "ternary"):
            raise ValueError(f"kind must be 'uniform', 'sign' or 'ternary', got {kind!r}.")
        self.seed = seed
        self.kind = kind
        self.rng = np.random.default_rng(seed)

    def positions(self, bar_index: np.ndarray) -> np.ndarray:
        n = bar_index.shape[0]
        if self.kind == "uniform":
            return self.rng.uniform(-1.0, 1.0, n)
        if self.kind == "sign":
            return self.rng.choice(np.array([-1.0, 1.0]), n)
        return self.rng.integers(-1, 2, n).astype(np.float64)

    def __repr__(self) -> str:
        return f"RandomPolicy(seed={self.seed!r}, kind={self.kind!r})"


class OneBarAheadOracle(Baseline):
    """Cheats: holds the sign of the *next* bar's open-to-close move. For tests only.

    The decision at bar ``t`` fills at bar ``t + 1``'s open and is marked at its close, so
    knowing ``sign(close_{t+1} - open_{t+1})`` must earn hugely; if it does not, rewards are
    not wired to the future the way the env claims.

    Args:
        candles: the same candles (or ``MarketArrays``, or an env with ``.market``) the env
            replays, so that bar indices match.
    """

    name = "oracle"

    def __init__(self, candles: pd.DataFrame | MarketArrays | Any) -> None:
        market = getattr(candles, "market", candles)
        if isinstance(market, MarketArrays):
            move = market.market[:, M_CLOSE] - market.market[:, M_OPEN]
        else:
            move = candles["close"].to_numpy(np.float64) - candles["open"].to_numpy(np.float64)
        self._next_move = np.append(move[1:], 0.0)  # [t] = move of bar t + 1

    def positions(self, bar_index: np.ndarray) -> np.ndarray:
        return np.sign(self._next_move[bar_index])
