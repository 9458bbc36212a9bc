"""``MarketReplayVecEnv``: N market-replay envs stepped by one numba call (SB3 ``VecEnv``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numba
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
from envs.env import (
    as_config,
    episode_capacity,
    episode_starts,
    invalid_action_message,
    ledger_frame,
    make_spaces,
)
from envs.kernels import (
    ACCOUNT_NAMES,
    C_BAR,
    C_SLOT,
    C_START,
    C_STEP,
    C_TRUNCATED,
    LEDGER_COLUMNS,
    N_COUNTERS,
    N_STATE,
    S_COST,
    S_EQUITY,
    S_POSITION,
    MarketArrays,
    make_params,
    replay_kernel,
    reset_kernel,
    restart_kernel,
    step_kernel,
    step_kernel_parallel,
)

PARALLEL_MIN_ROWS = 8192
"""Candle rows per step (``n_envs * window``) from which the ``prange`` kernel is the default:
on 2 cores it is 1.2x at N=64, T=128 and 1.7-1.8x at N=256, and slower below."""

_PER_ENV_ATTRIBUTES = frozenset({"bar_index", "equity", "position", "last_cost", "steps"})


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
        parallel: spread the envs over numba threads (``prange``). ``None`` (default): only
            when numba has more than one thread and a step writes at least
            :data:`PARALLEL_MIN_ROWS` candle rows (``n_envs * window``); below that, waking
            the threads costs more than they save (measured on 2 cores, docs/environment.md).

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
        parallel: bool | None = None,
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, int | np.integer) or n_envs < 1:
            raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}.")
        self.config = as_config(config)
        self.market = (
            candles if isinstance(candles, MarketArrays) else MarketArrays.from_candles(candles)
        )
        observation_space, action_space = make_spaces(self.config)
        n = int(n_envs)
        cfg = self.config
        self.render_mode = None
        if parallel is None:
            parallel = n_envs * self.config.window >= PARALLEL_MIN_ROWS and (
                numba.get_num_threads() > 1
            )
        self.parallel = bool(parallel)
        self._kernel = step_kernel_parallel if parallel else step_kernel
        self._discrete = cfg.action == "discrete"
        self._params = make_params(cfg)
        self._state = np.zeros((n, N_STATE), dtype=np.float64)
        self._counters = np.zeros((n, N_COUNTERS), dtype=np.int64)
        rows = episode_capacity(cfg, self.market) if cfg.record_ledger else 0
        self._ledger = np.zeros((2, rows, n, len(LEDGER_COLUMNS)), dtype=np.float64)
        self._done_meta = np.zeros((n, 2), dtype=np.int64)  # steps, first bar
        self._round_done = np.zeros(n, dtype=bool)  # test mode: finished since all last did
        self._first_start, self._last_start = episode_starts(cfg, self.market)
        self._blank_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self._ok_shapes = ((n,), (n, 1))
        self._ok_kinds = "iu" if self._discrete else "fiu"
        self._candles_shape = (n, cfg.window, self.market.features.shape[1])
        self._account_shape = (n, len(ACCOUNT_NAMES))
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
    def walk_start(self) -> int:
        """Last bar of the first observation of every test walk (``mode="test"``)."""
        return self._first_start

    @property
    def first_valid(self) -> int:
        """First bar whose features are defined."""
        return self.market.first_valid

    @property
    def bar_index(self) -> np.ndarray:
        """int64 ``[N]`` (a copy): last bar of each env's current observation."""
        return self._counters[:, C_BAR].copy()

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
        self._round_done[:] = False
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
        if type(actions) is not np.ndarray:
            actions = np.asarray(actions)
        kind = actions.dtype.kind
        if actions.shape not in self._ok_shapes or kind not in self._ok_kinds:
            self._raise_bad_actions(actions)
        targets = actions.reshape(self.num_envs).astype(np.float64)  # a fresh float64 [N]
        n = self.num_envs
        candles = np.empty(self._candles_shape, dtype=np.float32)
        account = np.empty(self._account_shape, dtype=np.float32)
        rewards = np.empty(n, dtype=np.float32)
        dones = np.empty(n, dtype=bool)
        status = self._kernel(
            targets,
            self.market.features,
            self.market.market,
            self._params,
            self._counters,
            self._state,
            self._ledger,
            candles,
            account,
            rewards,
            dones,
        )
        if status < 0:
            i = -status - 1
            raise ValueError(f"env {i}: " + invalid_action_message(actions[i], self._discrete))
        infos = self._blank_infos.copy()
        if status > 0:
            self._finish_episodes(dones, candles, account, infos)
        obs = {"candles": candles, "account": account}
        return obs, rewards, dones, infos

    def replay(
        self, actions: np.ndarray, alive: np.ndarray, account: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Step every env ``C`` times with ``actions [C, N]`` in one call (test walks).

        The backtest's fast path (:func:`envs.kernels.replay_kernel`): no candle windows, no
        infos, no auto-reset. An env whose episode ends (truncated at the last bar or
        ruined) is marked ``False`` in ``alive`` and not stepped again; its later rows are 0.
        Use after :meth:`reset` (``mode="test"``) instead of :meth:`step`, not mixed with it.

        Args:
            actions: ``[C, N]`` continuous actions (one row per step).
            alive: bool ``[N]``, updated in place; start with all True.
            account: also return the account part of the next observation.

        Returns:
            ``(rewards, positions, costs, account)``: float64 ``[C, N]`` log return of equity,
            position held (the ledger's ``position``), costs as a fraction of the equity before
            the step; and float32 ``[N, A]`` (or None).

        Raises:
            ValueError: a non-finite action, or discrete actions.
        """
        if self._discrete:
            raise ValueError("replay() takes continuous actions only.")
        actions = np.ascontiguousarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.num_envs:
            raise ValueError(
                f"actions must have shape [C, {self.num_envs}], got {actions.shape}."
            )
        shape = actions.shape
        rewards, positions, costs = np.empty(shape), np.empty(shape), np.empty(shape)
        account_out = np.empty(self._account_shape if account else (0, 0), dtype=np.float32)
        status = replay_kernel(
            actions, self.market.market, self._params, self._counters, self._state,
            self._ledger, alive, rewards, positions, costs, account_out, self.config.window,
        )
        if status < 0:
            i = -status - 1
            raise ValueError(f"env {i}: " + invalid_action_message(np.float64(np.nan), False))
        return rewards, positions, costs, (account_out if account else None)

    def close(self) -> None:
        """Nothing to release."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute ``attr_name`` of each env in ``indices``, as a ``DummyVecEnv`` would give.

        Per-env values (``bar_index``, ``equity``, ``position``, ``last_cost``, ``steps``) give
        each env's own entry; everything else is shared and repeated.
        """
        value = getattr(self, attr_name)
        if attr_name in _PER_ENV_ATTRIBUTES:
            return [value[i].item() for i in self._get_indices(indices)]
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set a (shared) attribute; all envs share one config, so ``indices`` must be all."""
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        """Call a method once per env in ``indices`` (``ledger`` gets the env's index)."""
        method = getattr(self, method_name)
        if method_name == "ledger":
            return [method(i, *method_args, **kwargs) for i in self._get_indices(indices)]
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
        slot = self._counters.item(env, C_SLOT)
        if completed:
            steps, start = self._done_meta.item(env, 0), self._done_meta.item(env, 1)
            return ledger_frame(self.market, start, self._ledger[1 - slot, :steps, env])
        steps, start = self._counters.item(env, C_STEP), self._counters.item(env, C_START)
        return ledger_frame(self.market, start, self._ledger[slot, :steps, env])

    def ledger_arrays(self, completed: bool = False) -> dict[str, np.ndarray]:
        """Every env's running (or last completed) episode as ``[N, L]`` arrays.

        Returns:
            ``bar`` (int64, bar the position was held in; -1 past an env's end), ``position``,
            ``fill``, ``units``, ``costs``, ``equity``, ``reward`` (float64, NaN past an env's
            end) and ``steps`` (int64 ``[N]``). ``L`` is the longest episode, so in test mode
            (all envs in lockstep, none ruined) there is no padding.
        """
        self._check_ledger()
        slots = self._counters[:, C_SLOT]
        if completed:
            steps, start, slots = self._done_meta[:, 0], self._done_meta[:, 1], 1 - slots
        else:
            steps, start = self._counters[:, C_STEP], self._counters[:, C_START]
        width = int(steps.max()) if steps.size else 0
        k = np.arange(width)
        valid = k[None, :] < steps[:, None]
        envs = np.arange(self.num_envs)[:, None]
        rows = self._ledger[slots[:, None], k[None, :], envs]  # [N, width, 6]
        out: dict[str, np.ndarray] = {
            "bar": np.where(valid, start[:, None] + 1 + k[None, :], -1).astype(np.int64)
        }
        for j, name in enumerate(LEDGER_COLUMNS):
            out[name] = np.where(valid, rows[:, :, j], np.nan)
        out["steps"] = steps.copy()
        return out

    # ------------------------------------------------------------------ checkpoints
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly: per-env arrays, ledgers, generator states.

        Only numpy arrays (int64 / float64), so any array checkpoint format can store it.
        """
        rng = np.array([_pcg64_words(r) for r in self._rngs], dtype=np.int64).reshape(-1, 6)
        return {
            "state": self._state.copy(),
            "counters": self._counters.copy(),
            "ledger": self._ledger.copy(),
            "done_meta": self._done_meta.copy(),
            "round_done": self._round_done.astype(np.int64),
            "rng": rng,
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`get_state` (from a vec env with the same candles, config and N).

        Raises:
            ValueError: an array's shape does not match this vec env.
        """
        targets = {
            "state": self._state,
            "counters": self._counters,
            "ledger": self._ledger,
            "done_meta": self._done_meta,
        }
        for name, target in targets.items():
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"saved env state {name!r} has shape {value.shape}, this vec env needs "
                    f"{target.shape}: build it with the same candles, config and n_envs."
                )
            target[...] = value
        round_done = state.get("round_done")  # absent from states saved before it existed
        self._round_done[:] = False if round_done is None else np.asarray(round_done, dtype=bool)
        for i, words in enumerate(np.asarray(state["rng"], dtype=np.int64)):
            self._rngs[i] = _pcg64_from_words(words)
        self._started = True

    # ------------------------------------------------------------------ helpers
    def _new_obs(self) -> tuple[np.ndarray, np.ndarray]:
        candles = np.empty(self._candles_shape, dtype=np.float32)
        account = np.empty(self._account_shape, dtype=np.float32)
        return candles, account

    def _raise_bad_actions(self, actions: np.ndarray) -> None:
        if actions.shape not in self._ok_shapes:
            raise ValueError(
                f"actions must be an array of shape {self._ok_shapes[0]} or {self._ok_shapes[1]}"
                f" (one per env), got shape {actions.shape} and dtype {actions.dtype}."
            )
        if self._discrete:
            raise ValueError(
                f"discrete actions must be integers 0, 1, 2, got dtype {actions.dtype}."
            )
        raise ValueError(f"continuous actions must be numbers, got dtype {actions.dtype}.")

    def _draw(self, i: int) -> tuple[int, int]:
        """Env ``i``'s next episode, as :func:`envs.env.draw_episode` draws it."""
        if self.config.mode == "train":
            start = int(self._rngs[i].integers(self._first_start, self._last_start + 1))
            return start, start + self.config.episode_length
        return self._first_start, self.market.n_bars - 1

    def _reset_envs(self, ids: np.ndarray, candles: np.ndarray, account: np.ndarray) -> None:
        starts = np.empty(ids.shape[0], dtype=np.int64)
        ends = np.empty(ids.shape[0], dtype=np.int64)
        for j, i in enumerate(ids.tolist()):
            starts[j], ends[j] = self._draw(i)
        reset_kernel(
            ids,
            starts,
            ends,
            float(self.config.initial_equity),
            self.market.features,
            self.market.market,
            self._params,
            self._counters,
            self._state,
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
        """Infos of the finished envs, then archive their ledgers and restart them.

        Test mode keeps each env's *first* episode since the last time every env finished:
        an env ruined again before the others end (a pass that restarted and was ruined a
        second time) does not overwrite its completed ledger, which holds the pass.
        """
        ids = dones.nonzero()[0]
        starts = np.empty(ids.shape[0], dtype=np.int64)
        ends = np.empty(ids.shape[0], dtype=np.int64)
        counters, state, times = self._counters, self._state, self.market.times
        final_candles, final_account = candles[ids], account[ids]  # fresh copies, [k, ...]
        for j, i in enumerate(ids.tolist()):
            infos[i] = {
                **self._info(i, state.item(i, S_COST)),
                "terminal_observation": {"candles": final_candles[j], "account": final_account[j]},
                "TimeLimit.truncated": bool(counters.item(i, C_TRUNCATED)),
            }
            starts[j], ends[j] = self._draw(i)
        repeat = np.zeros(0, dtype=np.int64)
        if self.config.mode == "test":
            repeat = ids[self._round_done[ids]]
            kept_meta, kept_slot = self._done_meta[repeat].copy(), counters[repeat, C_SLOT].copy()
        restart_kernel(
            ids,
            starts,
            ends,
            float(self.config.initial_equity),
            self.market.features,
            self.market.market,
            self._params,
            counters,
            self._state,
            self._done_meta,
            candles,
            account,
        )
        if self.config.mode == "test":
            # a repeat finish restarts in the slot it used, keeping the completed episode
            self._done_meta[repeat], counters[repeat, C_SLOT] = kept_meta, kept_slot
            self._round_done[ids] = True
            if self._round_done.all():
                self._round_done[:] = False
        equity0 = float(self.config.initial_equity)
        for j, i in enumerate(ids.tolist()):
            self.reset_infos[i] = {
                "equity": equity0,
                "position": 0.0,
                "cost": 0.0,
                "time": times[starts.item(j)],
            }

    def _info(self, i: int, cost: float) -> dict[str, Any]:
        return {
            "equity": self._state.item(i, S_EQUITY),
            "position": self._state.item(i, S_POSITION),
            "cost": cost,
            "time": self.market.times[self._counters.item(i, C_BAR)],
        }

    def _check_ledger(self) -> None:
        if not self.config.record_ledger:
            raise RuntimeError("the ledger is off: build the env with record_ledger=True.")


_MASK64 = (1 << 64) - 1


def _pcg64_words(rng: np.random.Generator) -> list[int]:
    """A PCG64 generator's state as six int64 words (128-bit state and increment split)."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be saved, got {st['bit_generator']}.")
    words = [st["state"]["state"] >> 64, st["state"]["state"] & _MASK64]
    words += [st["state"]["inc"] >> 64, st["state"]["inc"] & _MASK64]
    words += [st["has_uint32"], st["uinteger"]]
    return [int(np.uint64(w).view(np.int64)) for w in words]


def _pcg64_from_words(words: np.ndarray) -> np.random.Generator:
    """Inverse of :func:`_pcg64_words`."""
    u = [int(np.int64(w).view(np.uint64)) for w in words]
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (u[0] << 64) | u[1], "inc": (u[2] << 64) | u[3]},
        "has_uint32": u[4],
        "uinteger": u[5],
    }
    return np.random.Generator(bit_generator)
