"""The one step kernel: trading rules, accounting and observations for N environments.

``MarketReplayEnv`` calls it with N = 1, ``MarketReplayVecEnv`` with N envs; there is no other
implementation of the trading rules. The kernels are pure functions over arrays (no objects),
compiled once by numba (``cache=True``) and reused by every front door. They use numpy's
error model (a division by zero gives inf/NaN instead of raising; every such case is guarded
explicitly), and the per-env functions are inlined into the loops.

Array layout (every array C-contiguous and writable; float64 unless stated). Few, packed
arguments keep numba's per-call dispatch cost low (it grows with the argument count and
dominates a single env's step):

* ``features``  float32 ``[n_bars, F]``: per-bar features (:mod:`envs.features`);
* ``market``    ``[n_bars, 7]``: columns ``M_OPEN``, ``M_CLOSE``, ``M_SCALE`` (ATR / close),
  then the 4 clock harmonics from ``M_CLOCK`` on;
* ``params``    ``[6]``: entries ``P_*`` (discrete flag, max position, trade rate,
  financing rate, ruin floor, ledger flag), from :func:`make_params`;
* ``counters``  int64 ``[N, 7]``: columns ``C_*`` (bar = last bar of the current
  observation, first bar, last bar, steps taken, bars held, truncated flag, ledger slot);
* ``state``     ``[N, 8]``: columns ``S_*`` (cash, units, equity, position, log return of
  the episode so far, that log return at the close where the open position was decided,
  last reward, last cost);
* ``ledger``    ``[S, L, N, 6]``: ``ledger[slot, step, env]`` holds columns ``L_*``. Step-major,
  so envs in lockstep write one contiguous block per step; the vec env keeps S = 2 slots and
  flips an env's slot when it auto-resets, so the finished episode stays readable without
  being copied.

Timing of one step of env ``i`` (its observation ends at bar ``b``): the action chosen at
bar ``b``'s close is filled at bar ``b + 1``'s open through :func:`envs.costs.rebalance`, the
position is marked at bar ``b + 1``'s close, and the reward is
``log(equity_{b+1} / equity_b)``. The next observation ends at bar ``b + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numba as nb
import numpy as np
import pandas as pd

from envs.config import EnvConfig
from envs.costs import cost_rates, rebalance
from envs.features import compute_clock, features_and_scale

# market columns
M_OPEN, M_CLOSE, M_SCALE, M_CLOCK = 0, 1, 2, 3
N_MARKET = 7
# params entries
P_DISCRETE, P_MAX_POSITION, P_TRADE_RATE, P_FINANCING_RATE, P_EQUITY_FLOOR, P_RECORD = range(6)
N_PARAMS = 6
# counters columns
C_BAR, C_START, C_END, C_STEP, C_HELD, C_TRUNCATED, C_SLOT = range(7)
N_COUNTERS = 7
# state columns
S_CASH, S_UNITS, S_EQUITY, S_POSITION, S_LOGRET, S_ENTRY_LOGRET, S_REWARD, S_COST = range(8)
N_STATE = 8
# ledger columns
L_POSITION, L_FILL, L_UNITS, L_COST, L_EQUITY, L_REWARD = range(6)
LEDGER_COLUMNS = ("position", "fill", "units", "costs", "equity", "reward")

ACCOUNT_NAMES: tuple[str, ...] = (
    "position",
    "unrealized_pnl",
    "equity_change",
    "bars_in_position",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
)
#: Account values are clipped to +-ACCOUNT_CLIP (the observation space's bounds).
ACCOUNT_CLIP = 10.0
#: Equity is floored at this fraction of the initial equity; reaching it is ruin.
RUIN_FRACTION = 1e-9


@dataclass(frozen=True)
class MarketArrays:
    """What the kernels read about a market, built once per candle frame.

    Attributes:
        index: the candles' timestamps (UTC).
        features: float32 ``[n_bars, F]`` (:func:`envs.features.compute_features`).
        first_valid: first bar whose features are defined.
        market: float64 ``[n_bars, 7]``: open, close, ATR / close, 4 clock harmonics.
    """

    index: pd.DatetimeIndex
    features: np.ndarray
    first_valid: int
    market: np.ndarray

    @classmethod
    def from_candles(cls, candles: pd.DataFrame) -> MarketArrays:
        """Validate ``candles`` and compute every per-bar array."""
        candles, features, scale, first_valid = features_and_scale(candles)
        market = np.empty((len(candles), N_MARKET), dtype=np.float64)
        market[:, M_OPEN] = candles["open"].to_numpy(np.float64)
        market[:, M_CLOSE] = candles["close"].to_numpy(np.float64)
        market[:, M_SCALE] = scale
        market[:, M_CLOCK:] = compute_clock(candles.index)
        return cls(candles.index, features, first_valid, market)

    @property
    def n_bars(self) -> int:
        """Number of bars."""
        return self.features.shape[0]

    @cached_property
    def times(self) -> list[pd.Timestamp]:
        """The timestamps as a list (indexing a ``DatetimeIndex`` costs microseconds)."""
        return list(self.index)


def make_params(config: EnvConfig) -> np.ndarray:
    """The kernels' ``params`` array for ``config``."""
    params = np.empty(N_PARAMS, dtype=np.float64)
    params[P_DISCRETE] = config.action == "discrete"
    params[P_MAX_POSITION] = config.max_position
    params[P_TRADE_RATE], params[P_FINANCING_RATE] = cost_rates(config)
    params[P_EQUITY_FLOOR] = RUIN_FRACTION * config.initial_equity
    params[P_RECORD] = config.record_ledger
    return params


_JIT = {"cache": True, "error_model": "numpy"}


@nb.njit(**_JIT)
def _clip(x: float, bound: float) -> float:
    if x > bound:
        return bound
    if x < -bound:
        return -bound
    return x


@nb.njit(inline="always", **_JIT)
def copy_window(
    i: int,
    window: int,
    n_features: int,
    features_flat: np.ndarray,
    counters: np.ndarray,
    candles_flat: np.ndarray,
) -> None:
    """``candles[i] = features[b - T + 1 : b + 1]`` for env ``i``'s bar ``b``.

    A flat copy of ``T * F`` contiguous floats between the flattened arrays
    ``features_flat`` (``[n_bars * F]``) and ``candles_flat`` (``[N * T * F]``). The indices
    are unsigned so that numba emits no negative-index wrap-around checks and LLVM
    vectorises the loop (4-8x faster than a 2-D slice assignment).
    """
    size = np.uint64(window * n_features)
    start = np.uint64((counters[i, C_BAR] - window + 1) * n_features)
    base = np.uint64(i) * size
    for k in range(size):
        candles_flat[base + k] = features_flat[start + k]


@nb.njit(inline="always", **_JIT)
def write_account(
    i: int,
    window: int,
    market: np.ndarray,
    max_position: float,
    counters: np.ndarray,
    state: np.ndarray,
    account_out: np.ndarray,
) -> None:
    """Env ``i``'s account vector (see :data:`ACCOUNT_NAMES`) at its bar ``b``:

    0. position: held notional / equity at the last close, divided by ``max_position``;
    1. unrealised PnL: log equity change since the close at which the open position was
       decided (so the fill's costs count), as a z-score: divided by
       ``max_position * ATR/close * sqrt(bars held)``; 0 when flat;
    2. equity change: log return since the episode start, the same z-score over the steps;
    3. bars in position ``h`` as ``h / (h + T)``, in [0, 1);
    4. - 7. time-of-day and day-of-week harmonics of the last bar.

    All clipped to ``+-ACCOUNT_CLIP``. Log returns are running sums of the rewards, so no
    logarithm is taken here.
    """
    b = counters[i, C_BAR]
    scale = market[b, M_SCALE] * max_position
    held = counters[i, C_HELD]
    steps = counters[i, C_STEP]
    logret = state[i, S_LOGRET]
    account_out[i, 0] = _clip(state[i, S_POSITION] / max_position, ACCOUNT_CLIP)
    upnl = 0.0
    change = 0.0
    if scale > 0.0:
        if held > 0:
            upnl = (logret - state[i, S_ENTRY_LOGRET]) / (scale * math.sqrt(held))
        if steps > 0:
            change = logret / (scale * math.sqrt(steps))
    account_out[i, 1] = _clip(upnl, ACCOUNT_CLIP)
    account_out[i, 2] = _clip(change, ACCOUNT_CLIP)
    account_out[i, 3] = held / (held + window)
    for k in range(4):
        account_out[i, 4 + k] = market[b, M_CLOCK + k]


@nb.njit(inline="always", **_JIT)
def _start_episode(
    i: int, start: int, end: int, initial_equity: float, counters: np.ndarray, state: np.ndarray
) -> None:
    """Put env ``i`` at the start of an episode: flat, all cash, observation ending at ``start``.

    Keeps the env's ledger slot.
    """
    slot = counters[i, C_SLOT]
    counters[i, :] = 0
    counters[i, C_SLOT] = slot
    counters[i, C_BAR] = start
    counters[i, C_START] = start
    counters[i, C_END] = end
    state[i, :] = 0.0
    state[i, S_CASH] = initial_equity
    state[i, S_EQUITY] = initial_equity


@nb.njit(**_JIT)
def reset_kernel(
    env_ids: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    initial_equity: float,
    features: np.ndarray,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    candles_out: np.ndarray,
    account_out: np.ndarray,
) -> None:
    """Start a new episode in each env of ``env_ids`` and write its first observation.

    Args:
        env_ids: int64 ``[k]`` envs to reset.
        starts: int64 ``[k]`` last bar of each first observation (``>= first_valid + T - 1``).
        ends: int64 ``[k]`` last bar of each episode (the episode takes ``end - start`` steps).
        initial_equity: equity (all cash, flat) at the start.
        features, market, params: as in :func:`step_kernel`.
        counters, state: per-env state, updated in place.
        candles_out, account_out: observation outputs (rows ``env_ids`` are written).
    """
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    for j in range(env_ids.shape[0]):
        i = env_ids[j]
        _start_episode(i, starts[j], ends[j], initial_equity, counters, state)
        copy_window(i, window, n_features, features_flat, counters, candles_flat)
        write_account(i, window, market, params[P_MAX_POSITION], counters, state, account_out)


@nb.njit(**_JIT)
def restart_kernel(
    env_ids: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    initial_equity: float,
    features: np.ndarray,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    done_meta: np.ndarray,
    candles_out: np.ndarray,
    account_out: np.ndarray,
) -> None:
    """Auto-reset of finished envs: keep each one's ledger, then as :func:`reset_kernel`.

    The finished episode's ledger stays in its slot; the env flips to the other slot
    (``1 - slot``), and its steps and first bar go to ``done_meta``.

    Args:
        done_meta: int64 ``[N, 2]``: steps and first bar of each env's last completed episode.
        Other arguments: as in :func:`reset_kernel`.
    """
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    for j in range(env_ids.shape[0]):
        i = env_ids[j]
        done_meta[i, 0] = counters[i, C_STEP]
        done_meta[i, 1] = counters[i, C_START]
        counters[i, C_SLOT] = 1 - counters[i, C_SLOT]
        _start_episode(i, starts[j], ends[j], initial_equity, counters, state)
        copy_window(i, window, n_features, features_flat, counters, candles_flat)
        write_account(i, window, market, params[P_MAX_POSITION], counters, state, account_out)


@nb.njit(**_JIT)
def check_actions(actions: np.ndarray, discrete: bool) -> int:
    """Index of the first invalid action, or -1: continuous must be finite, discrete 0/1/2."""
    for i in range(actions.shape[0]):
        a = actions[i]
        if discrete:
            if not (a == 0.0 or a == 1.0 or a == 2.0):
                return i
        elif not np.isfinite(a):
            return i
    return -1


@nb.njit(inline="always", **_JIT)
def step_env(
    i: int,
    action: float,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    ledger: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
    position_out: np.ndarray,
) -> bool:
    """Advance env ``i`` by one bar (see the module docstring); returns whether it is done.

    The target position is ``clip(action, -1, 1) * max_position`` (continuous) or
    ``(action - 1) * max_position`` (discrete 0 = short, 1 = flat, 2 = long). Equity at or
    below the ruin floor is ruin: the equity is set to the floor, the position closed, and
    the env terminates. Reaching the episode's last bar truncates (unless ruined). The
    caller writes the next observation (:func:`copy_window`, :func:`write_account`) afterwards; the
    arguments are those of :func:`step_kernel`.
    """
    max_position = params[P_MAX_POSITION]
    equity_floor = params[P_EQUITY_FLOOR]
    if params[P_DISCRETE] != 0.0:
        target = (action - 1.0) * max_position
    else:
        target = min(max(action, -1.0), 1.0) * max_position
    t = counters[i, C_BAR] + 1  # the bar we move into: fill at its open, mark at its close
    price_open = market[t, M_OPEN]
    price_close = market[t, M_CLOSE]
    cash = state[i, S_CASH]
    units_old = state[i, S_UNITS]
    units = units_old
    equity_prev = state[i, S_EQUITY]
    held_old = units * price_open
    equity_pre = cash + held_old
    gap_ruin = not (equity_pre > equity_floor)
    if not gap_ruin:
        traded, cost = rebalance(
            equity_pre, held_old, target, params[P_TRADE_RATE], params[P_FINANCING_RATE]
        )
        cash = cash - traded - cost
        units = (held_old + traded) / price_open
        fill = traded / equity_pre
        position = target
    else:  # ruined by the gap to the open: nothing left to trade with
        cost = 0.0
        fill = 0.0
        position = 0.0
    equity = cash + units * price_close
    ruined = gap_ruin or not (equity > equity_floor)  # also catches NaN
    if ruined:
        equity = equity_floor
        cash = equity_floor
        units = 0.0
    reward = math.log(equity / equity_prev)
    logret_prev = state[i, S_LOGRET]

    # bars held and the entry mark of the open position (selects, not branches: a random
    # policy opens and flips unpredictably)
    opened = (units > 0.0) != (units_old > 0.0) or units_old == 0.0  # opened or flipped
    held = counters[i, C_HELD]
    counters[i, C_HELD] = 0 if units == 0.0 else (1 if opened else held + 1)
    entry = state[i, S_ENTRY_LOGRET]
    state[i, S_ENTRY_LOGRET] = logret_prev if opened else entry
    state[i, S_CASH] = cash
    state[i, S_UNITS] = units
    state[i, S_EQUITY] = equity
    state[i, S_POSITION] = units * price_close / equity
    state[i, S_LOGRET] = logret_prev + reward
    state[i, S_REWARD] = reward
    state[i, S_COST] = cost
    step = counters[i, C_STEP] + 1
    counters[i, C_STEP] = step
    counters[i, C_BAR] = t

    if params[P_RECORD] != 0.0:
        slot = counters[i, C_SLOT]
        row = step - 1
        ledger[slot, row, i, L_POSITION] = position
        ledger[slot, row, i, L_FILL] = fill
        ledger[slot, row, i, L_UNITS] = units
        ledger[slot, row, i, L_COST] = cost
        ledger[slot, row, i, L_EQUITY] = equity
        ledger[slot, row, i, L_REWARD] = reward

    reward_out[i] = reward
    position_out[i] = position
    at_end = t >= counters[i, C_END]
    counters[i, C_TRUNCATED] = at_end and not ruined
    done_out[i] = ruined or at_end
    return ruined or at_end


@nb.njit(**_JIT)
def step_kernel(
    actions: np.ndarray,
    features: np.ndarray,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    ledger: np.ndarray,
    candles_out: np.ndarray,
    account_out: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
) -> int:
    """Step every env once with ``actions``, then write every next observation.

    Args:
        actions: float64 ``[N]`` raw actions (continuous in any range, clipped; discrete 0/1/2).
        features: float32 ``[n_bars, F]``.
        market: float64 ``[n_bars, 7]`` open, close, ATR / close, clock harmonics.
        params: float64 ``[6]`` from :func:`make_params`.
        counters, state: per-env state, updated in place (the step's float64 reward and cost
            land in ``state[:, S_REWARD]`` and ``state[:, S_COST]``, the truncation flag in
            ``counters[:, C_TRUNCATED]``).
        ledger: float64 ``[S, L, N, 6]`` per-step records, written to each env's slot when
            ``params[P_RECORD]``.
        candles_out: float32 ``[N, T, F]`` next observations' windows (written).
        account_out: float32 ``[N, A]`` next observations' account vectors (written).
        reward_out: float32 ``[N]`` rewards (written).
        done_out: bool ``[N]`` whether each env's episode ended (written).

    Returns:
        The number of envs whose episode ended, or ``-(i + 1)`` if the action of env ``i`` is
        invalid (then nothing was changed).
    """
    bad = check_actions(actions, params[P_DISCRETE] != 0.0)
    if bad >= 0:
        return -(bad + 1)
    n_done = 0
    position_out = np.empty(actions.shape[0])
    for i in range(actions.shape[0]):
        if step_env(
            i, actions[i], market, params, counters, state, ledger, reward_out, done_out,
            position_out,
        ):
            n_done += 1
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    max_position = params[P_MAX_POSITION]
    # separate passes for trading, windows and account: ~30% faster than one mixed loop
    for i in range(actions.shape[0]):
        copy_window(i, window, n_features, features_flat, counters, candles_flat)
    for i in range(actions.shape[0]):
        write_account(i, window, market, max_position, counters, state, account_out)
    return n_done


@nb.njit(parallel=True, **_JIT)
def step_kernel_parallel(
    actions: np.ndarray,
    features: np.ndarray,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    ledger: np.ndarray,
    candles_out: np.ndarray,
    account_out: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
) -> int:
    """:func:`step_kernel` with the loops over envs spread over numba threads (opt-in)."""
    bad = check_actions(actions, params[P_DISCRETE] != 0.0)
    if bad >= 0:
        return -(bad + 1)
    n_done = 0
    position_out = np.empty(actions.shape[0])
    for i in nb.prange(actions.shape[0]):
        if step_env(
            i, actions[i], market, params, counters, state, ledger, reward_out, done_out,
            position_out,
        ):
            n_done += 1
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    max_position = params[P_MAX_POSITION]
    for i in nb.prange(actions.shape[0]):
        copy_window(i, window, n_features, features_flat, counters, candles_flat)
        write_account(i, window, market, max_position, counters, state, account_out)
    return n_done


@nb.njit(**_JIT)
def replay_kernel(
    actions: np.ndarray,
    market: np.ndarray,
    params: np.ndarray,
    counters: np.ndarray,
    state: np.ndarray,
    ledger: np.ndarray,
    alive: np.ndarray,
    rewards_out: np.ndarray,
    positions_out: np.ndarray,
    costs_out: np.ndarray,
    account_out: np.ndarray,
    window: int,
) -> int:
    """Step N envs ``C`` times in one call, without candle windows and without auto-reset.

    The backtest's inner loop: a test walk needs each step's reward, position and cost and,
    for a policy that reads pre-encoded bars, only the account part of the next
    observation. Envs whose episode ended (``alive[i]`` False) are not stepped again; their
    later rows are 0.

    Args:
        actions: float64 ``[C, N]`` continuous actions, step-major (clipped like
            :func:`step_kernel`'s).
        market, params, counters, state, ledger: as in :func:`step_kernel`.
        alive: bool ``[N]`` envs still in their episode (updated in place).
        rewards_out: float64 ``[C, N]`` log return of equity per step (written).
        positions_out: float64 ``[C, N]`` position held over each step, as the ledger's
            ``position`` (written).
        costs_out: float64 ``[C, N]`` costs paid per step as a fraction of the equity before
            it (written).
        account_out: float32 ``[N, A]`` account part of the next observation, written after
            the last step; pass a ``[0, A]`` array to skip it.
        window: T, for the account's bars-in-position feature.

    Returns:
        0, or ``-(i + 1)`` if an action of env ``i`` is not finite (then the steps before it
        were taken).
    """
    n_steps, n = actions.shape
    reward_scratch = np.empty(n, dtype=np.float32)
    done_scratch = np.empty(n, dtype=np.bool_)
    position = np.empty(n)
    for c in range(n_steps):
        for i in range(n):
            if not alive[i]:
                rewards_out[c, i] = 0.0
                positions_out[c, i] = 0.0
                costs_out[c, i] = 0.0
                continue
            a = actions[c, i]
            if not np.isfinite(a):
                return -(i + 1)
            equity_prev = state[i, S_EQUITY]
            done = step_env(
                i, a, market, params, counters, state, ledger, reward_scratch, done_scratch,
                position,
            )
            rewards_out[c, i] = state[i, S_REWARD]
            positions_out[c, i] = position[i]
            costs_out[c, i] = state[i, S_COST] / equity_prev
            if done:
                alive[i] = False
    if account_out.shape[0] > 0:
        max_position = params[P_MAX_POSITION]
        for i in range(n):
            write_account(i, window, market, max_position, counters, state, account_out)
    return 0
