"""``MarketReplayVecEnv``: N market-replay envs stepped by one numba call (SB3 ``VecEnv``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from envs.config import EnvConfig
from envs.costs import cost_rates
from envs.env import (
    as_config,
    draw_episode,
    episode_capacity,
    episode_starts,
    invalid_action_message,
    ledger_frame,
    make_spaces,
)
from envs.kernels import (
    ACCOUNT_NAMES,
    C_START,
    C_STEP,
    LEDGER_COLUMNS,
    N_COUNTERS,
    N_STATE,
    RUIN_FRACTION,
    S_COST,
    S_EQUITY,
    S_POSITION,
    MarketArrays,
    reset_kernel,
    step_kernel,
    step_kernel_parallel,
)


class MarketReplayVecEnv(VecEnv):
    """``n_envs`` copies of :class:`~envs.env.MarketReplayEnv` behind SB3's ``VecEnv`` API.

    Same spaces, rules, costs, rewards and episodes as ``MarketReplayEnv`` (the same numba
    step kernel runs both): with ``seed=s``, env ``i`` equals a ``MarketReplayEnv`` reset with
    ``seed=s + i`` step for step, including auto-resets, which draw from env ``i``'s own
    generator like a later ``reset()`` without a seed.

    SB3 conventions: ``step`` returns ``(obs, rewards float32 [N], dones bool [N], infos)``;
    a finished env is reset at once and its ``infos[i]`` holds ``terminal_observation``,
    ``TimeLimit.truncated`` and the final ``equity``, ``position``, ``cost`` and ``time``.
    Infos of envs that did not finish are shared empty dicts (no allocation per env per
    step): treat them as read-only. Per-step values for every env are arrays instead:
    :attr:`equity`, :attr:`position`, :attr:`last_cost`, :attr:`bar_index`.

    ``mode="test"``: every env walks the whole split from the same first bar, so all envs
    finish on the same step (unless one is ruined, which terminates it early) and are
    reset together; run K stochastic passes and baselines side by side with external
    actions, then read :meth:`ledger_arrays` ``(completed=True)``.

    Args:
        candles: OHLCV frame (or prebuilt ``MarketArrays``).
        config: an :class:`EnvConfig`, a mapping, or None for defaults.
        n_envs: number of envs N.
        seed: env ``i`` is seeded with ``seed + i`` at the first ``reset()``; None: random.
        parallel: spread the envs over numba threads (``prange``). Off by default: on 2
            cores the thread start-up costs more than it saves.

    Attributes:
        features: float32 ``[n_bars, F]`` array observations are sliced from;
            ``obs["candles"][i] == features[bar_index[i] - T + 1 : bar_index[i] + 1]``.
    """

    def __init__(
        self,
        candles: pd.DataFrame | MarketArrays,
        config: EnvConfig | dict[str, Any] | None = None,
        n_envs: int = 1,
        seed: int | None = None,
        parallel: bool = False,
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, int | np.integer) or n_envs < 1:
            raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}.")
        self.config = as_config(config)
        self.market = (
            candles if isinstance(candles, MarketArrays) else MarketArrays.from_candles(candles)
        )
        episode_starts(self.config, self.market)  # raises if the data are too short
        observation_space, action_space = make_spaces(self.config)
        n = int(n_envs)
        cfg = self.config
        self.render_mode = None
        self.parallel = bool(parallel)
        self._kernel = step_kernel_parallel if parallel else step_kernel
        self._discrete = cfg.action == "discrete"
        self._trade_rate, self._financing_rate = cost_rates(cfg)
        self._floor = RUIN_FRACTION * cfg.initial_equity
        self._window = cfg.window
        self._bar = np.zeros(n, dtype=np.int64)
        self._state = np.zeros((n, N_STATE), dtype=np.float64)
        self._counters = np.zeros((n, N_COUNTERS), dtype=np.int64)
        rows = episode_capacity(cfg, self.market) if cfg.record_ledger else 0
        self._ledger = np.zeros((n, rows, len(LEDGER_COLUMNS)), dtype=np.float64)
        self._done_ledger = np.zeros_like(self._ledger)
        self._done_steps = np.zeros(n, dtype=np.int64)
        self._done_start = np.zeros(n, dtype=np.int64)
        self._truncated = np.zeros(n, dtype=bool)
        self._blank_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._ok_shapes = ((n,), (n, 1))
        self._rngs = [seeding.np_random(None)[0] for _ in range(n)]
        self._actions: np.ndarray | None = None
        self._started = False
        super().__init__(n, observation_space, action_space)
        if seed is not None:
            self.seed(seed)

    # ------------------------------------------------------------------ public attributes
    @property
    def features(self) -> np.ndarray:
        """float32 ``[n_bars, F]``: every bar's features; observations are slices of it."""
        return self.market.features

    @property
    def first_valid(self) -> int:
        """First bar whose features are defined."""
        return self.market.first_valid

    @property
    def bar_index(self) -> np.ndarray:
        """int64 ``[N]`` (a copy): last bar of each env's current observation."""
        return self._bar.copy()

    @property
    def equity(self) -> np.ndarray:
        """float64 ``[N]`` (a copy): each env's equity at its last close."""
        return self._state[:, S_EQUITY].copy()

    @property
    def position(self) -> np.ndarray:
        """float64 ``[N]`` (a copy): position held at the last close, fraction of equity."""
        return self._state[:, S_POSITION].copy()

    @property
    def last_cost(self) -> np.ndarray:
        """float64 ``[N]`` (a copy): cost paid by each env in the last step (currency)."""
        return self._state[:, S_COST].copy()

    @property
    def steps(self) -> np.ndarray:
        """int64 ``[N]`` (a copy): steps taken in each env's current episode."""
        return self._counters[:, C_STEP].copy()

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        """Reset every env (seeds from :meth:`seed` / the constructor apply now, once)."""
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self._rngs[i] = seeding.np_random(seed)[0]
        self._reset_seeds()
        self._reset_options()
        n = self.num_envs
        ids = np.arange(n, dtype=np.int64)
        candles, account = self._new_obs()
        self._reset_envs(ids, candles, account)
        self.reset_infos = [self._info(i, 0.0) for i in range(n)]
        self._started = True
        return {"candles": candles, "account": account}

    def step_async(self, actions: np.ndarray) -> None:
        """Store actions ``[N, 1]`` / ``[N]`` (continuous) or ``[N]`` codes (discrete)."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every env with the stored actions in one kernel call; auto-reset done envs.

        Raises:
            ValueError: actions of the wrong shape, NaN/inf, or invalid discrete codes
                (no env is stepped then).
            RuntimeError: ``reset()`` was never called.
        """
        if not self._started:
            raise RuntimeError("call reset() before step().")
        actions = self._actions
        if not isinstance(actions, np.ndarray):
            actions = np.asarray(actions)
        if actions.shape not in self._ok_shapes or actions.dtype.kind not in "fiub":
            raise ValueError(
                f"actions must be an array of shape {self._ok_shapes[0]} or {self._ok_shapes[1]}"
                f" (one per env), got shape {actions.shape} and dtype {actions.dtype}."
            )
        if actions.dtype.kind == "b" or (self._discrete and actions.dtype.kind == "f"):
            raise ValueError(
                f"discrete actions must be integers 0, 1, 2, got dtype {actions.dtype}."
                if self._discrete
                else f"continuous actions must be floats, got dtype {actions.dtype}."
            )
        targets = np.ascontiguousarray(actions, dtype=np.float64).reshape(self.num_envs)
        candles, account = self._new_obs()
        rewards = np.empty(self.num_envs, dtype=np.float32)
        dones = np.empty(self.num_envs, dtype=bool)
        status = self._kernel(
            targets,
            self._discrete,
            self.market.features,
            self.market.market,
            self.market.clock,
            self.config.max_position,
            self._trade_rate,
            self._financing_rate,
            self._floor,
            self._bar,
            self._state,
            self._counters,
            self._ledger,
            self.config.record_ledger,
            candles,
            account,
            rewards,
            dones,
            self._truncated,
        )
        if status < 0:
            i = -status - 1
            raise ValueError(f"env {i}: " + invalid_action_message(actions[i], self._discrete))
        infos = self._blank_infos.copy()
        if status > 0:
            self._finish_episodes(dones, candles, account, infos)
        obs = {"candles": candles, "account": account}
        return obs, rewards, dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The (shared) attribute ``attr_name``, once per env in ``indices``."""
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a (shared) attribute; all envs share one config, so ``indices`` must be all."""
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        """Call a (shared) method once per env in ``indices``."""
        method = getattr(self, method_name)
        return [method(*method_args, **kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """No env is wrapped (there are no per-env gymnasium objects)."""
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No rendering."""
        return [None for _ in range(self.num_envs)]

    # ------------------------------------------------------------------ ledgers
    def ledger(self, env: int, completed: bool = False) -> pd.DataFrame:
        """Ledger of env ``env``: its running episode, or its last completed one.

        Columns as :meth:`envs.env.MarketReplayEnv.ledger` (time, price, fill_price,
        position, fill, units, costs, equity, reward), one row per step.
        """
        self._check_ledger()
        if not 0 <= env < self.num_envs:
            raise IndexError(f"env must be in [0, {self.num_envs}), got {env}.")
        if completed:
            steps, start = int(self._done_steps[env]), int(self._done_start[env])
            return ledger_frame(self.market, start, self._done_ledger[env, :steps])
        steps, start = int(self._counters[env, C_STEP]), int(self._counters[env, C_START])
        return ledger_frame(self.market, start, self._ledger[env, :steps])

    def ledger_arrays(self, completed: bool = False) -> dict[str, np.ndarray]:
        """Every env's running (or last completed) episode as ``[N, L]`` arrays.

        Returns:
            ``bar`` (int64, bar the position was held in; -1 past an env's end), ``position``,
            ``fill``, ``units``, ``costs``, ``equity``, ``reward`` (float64, NaN past an env's
            end) and ``steps`` (int64 ``[N]``). ``L`` is the longest episode, so in test mode
            (all envs in lockstep, none ruined) there is no padding.
        """
        self._check_ledger()
        if completed:
            steps, start, rows = self._done_steps, self._done_start, self._done_ledger
        else:
            steps, start, rows = self._counters[:, C_STEP], self._counters[:, C_START], self._ledger
        width = int(steps.max()) if steps.size else 0
        k = np.arange(width)
        valid = k[None, :] < steps[:, None]
        out: dict[str, np.ndarray] = {
            "bar": np.where(valid, start[:, None] + 1 + k[None, :], -1).astype(np.int64)
        }
        for j, name in enumerate(LEDGER_COLUMNS):
            out[name] = np.where(valid, rows[:, :width, j], np.nan)
        out["steps"] = steps.copy()
        return out

    # ------------------------------------------------------------------ helpers
    def _new_obs(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.num_envs
        candles = np.empty((n, self._window, self.market.features.shape[1]), dtype=np.float32)
        account = np.empty((n, len(ACCOUNT_NAMES)), dtype=np.float32)
        return candles, account

    def _reset_envs(self, ids: np.ndarray, candles: np.ndarray, account: np.ndarray) -> None:
        starts = np.empty(ids.shape[0], dtype=np.int64)
        ends = np.empty(ids.shape[0], dtype=np.int64)
        for j, i in enumerate(ids):
            starts[j], ends[j] = draw_episode(self.config, self.market, self._rngs[i])
        reset_kernel(
            ids,
            starts,
            ends,
            float(self.config.initial_equity),
            self.market.features,
            self.market.market,
            self.market.clock,
            float(self.config.max_position),
            self._bar,
            self._state,
            self._counters,
            candles,
            account,
        )

    def _finish_episodes(
        self,
        dones: np.ndarray,
        candles: np.ndarray,
        account: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        ids = np.flatnonzero(dones)
        for i in ids:
            info = self._info(i, float(self._state[i, S_COST]))
            info["terminal_observation"] = {
                "candles": candles[i].copy(),
                "account": account[i].copy(),
            }
            info["TimeLimit.truncated"] = bool(self._truncated[i])
            infos[i] = info
            if self.config.record_ledger:
                steps = self._counters[i, C_STEP]
                self._done_ledger[i, :steps] = self._ledger[i, :steps]
                self._done_steps[i] = steps
                self._done_start[i] = self._counters[i, C_START]
        self._reset_envs(ids.astype(np.int64), candles, account)
        for i in ids:
            self.reset_infos[i] = self._info(i, 0.0)

    def _info(self, i: int, cost: float) -> dict[str, Any]:
        return {
            "equity": float(self._state[i, S_EQUITY]),
            "position": float(self._state[i, S_POSITION]),
            "cost": cost,
            "time": self.market.times[self._bar[i]],
        }

    def _check_ledger(self) -> None:
        if not self.config.record_ledger:
            raise RuntimeError("the ledger is off: build the env with record_ledger=True.")
