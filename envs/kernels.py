"""The one step kernel: trading rules, accounting and observations for N environments.

``MarketReplayEnv`` calls it with N = 1, ``MarketReplayVecEnv`` with N envs; there is no other
implementation of the trading rules. The kernels are pure functions over arrays (no objects),
so they can be compiled once by numba (``cache=True``) and reused by every front door.
They use numpy's error model (a division by zero gives inf/NaN instead of raising; every
such case is guarded explicitly), and the per-env functions are inlined into the loops.

Array layout (every array C-contiguous and writable; float64 unless stated):

* ``features``  float32 ``[n_bars, F]``: per-bar features (:mod:`envs.features`);
* ``market``    ``[n_bars, 3]``: columns ``M_OPEN``, ``M_CLOSE``, ``M_SCALE`` (ATR / close);
* ``clock``     float32 ``[n_bars, 4]``: time-of-day / day-of-week harmonics;
* ``bar``       int64 ``[N]``: index of the last bar of each env's current observation;
* ``state``     ``[N, 8]``: columns ``S_*`` (cash, units, equity, position, log return of
  the episode so far, log return at the open position's entry, last reward, last cost);
* ``counters``  int64 ``[N, 4]``: columns ``C_*`` (first bar, last bar, steps, bars held);
* ``ledger``    ``[N, L, 6]``: one row per step, columns ``L_*``.

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

from envs.costs import rebalance
from envs.features import compute_clock, features_and_scale

# market columns
M_OPEN, M_CLOSE, M_SCALE = 0, 1, 2
# state columns
S_CASH, S_UNITS, S_EQUITY, S_POSITION, S_LOGRET, S_ENTRY_LOGRET, S_REWARD, S_COST = range(8)
N_STATE = 8
# counters columns
C_START, C_END, C_STEP, C_HELD = 0, 1, 2, 3
N_COUNTERS = 4
# ledger columns
L_POSITION, L_FILL, L_UNITS, L_COST, L_EQUITY, L_REWARD = 0, 1, 2, 3, 4, 5
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
        market: float64 ``[n_bars, 3]``: open, close, ATR / close.
        clock: float32 ``[n_bars, 4]``: time-of-day / day-of-week harmonics.
    """

    index: pd.DatetimeIndex
    features: np.ndarray
    first_valid: int
    market: np.ndarray
    clock: np.ndarray

    @classmethod
    def from_candles(cls, candles: pd.DataFrame) -> MarketArrays:
        """Validate ``candles`` and compute every per-bar array."""
        candles, features, scale, first_valid = features_and_scale(candles)
        market = np.empty((len(candles), 3), dtype=np.float64)
        market[:, M_OPEN] = candles["open"].to_numpy(np.float64)
        market[:, M_CLOSE] = candles["close"].to_numpy(np.float64)
        market[:, M_SCALE] = scale
        return cls(candles.index, features, first_valid, market, compute_clock(candles.index))

    @property
    def n_bars(self) -> int:
        """Number of bars."""
        return self.features.shape[0]

    @cached_property
    def times(self) -> list[pd.Timestamp]:
        """The timestamps as a list (indexing a ``DatetimeIndex`` costs microseconds)."""
        return list(self.index)


_JIT = {"cache": True, "error_model": "numpy"}


@nb.njit(**_JIT)
def _clip(x: float, bound: float) -> float:
    if x > bound:
        return bound
    if x < -bound:
        return -bound
    return x


@nb.njit(inline="always", **_JIT)
def write_observation(
    i: int,
    window: int,
    n_features: int,
    features_flat: np.ndarray,
    market: np.ndarray,
    clock: np.ndarray,
    max_position: float,
    bar: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    candles_flat: np.ndarray,
    account_out: np.ndarray,
) -> None:
    """Write env ``i``'s observation (window ending at ``bar[i]``) into the output arrays.

    ``candles[i] = features[bar[i] - T + 1 : bar[i] + 1]``, done as a flat copy of ``T * F``
    contiguous floats between the flattened arrays ``features_flat`` (``[n_bars * F]``) and
    ``candles_flat`` (``[N * T * F]``). The indices are unsigned so that numba emits no
    negative-index wrap-around checks and LLVM vectorises the loop (4-8x faster).
    ``account_out[i]`` (see :data:`ACCOUNT_NAMES`) =

    0. position: held notional / equity at the last close, divided by ``max_position``;
    1. unrealised PnL: log return since the open position's entry (pre-trade equity at its
       first fill, so entry costs count), as a z-score: divided by
       ``max_position * ATR/close * sqrt(bars held)``; 0 when flat;
    2. equity change: log return since the episode start, the same z-score over the steps;
    3. bars in position ``h`` as ``h / (h + T)``, in [0, 1);
    4. - 7. time-of-day and day-of-week harmonics of the last bar.

    All clipped to ``+-ACCOUNT_CLIP``. Log returns are running sums of the rewards, so no
    logarithm is taken here.
    """
    b = bar[i]
    size = np.uint64(window * n_features)
    start = np.uint64((b - window + 1) * n_features)
    base = np.uint64(i) * size
    for k in range(size):  # flat forward copy of one contiguous block
        candles_flat[base + k] = features_flat[start + k]

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
        account_out[i, 4 + k] = clock[b, k]


@nb.njit(**_JIT)
def reset_kernel(
    env_ids: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    initial_equity: float,
    features: np.ndarray,
    market: np.ndarray,
    clock: np.ndarray,
    max_position: float,
    bar: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    candles_out: np.ndarray,
    account_out: np.ndarray,
) -> None:
    """Start a new episode in each env of ``env_ids`` and write its first observation.

    Args:
        env_ids: int64 ``[k]`` envs to reset.
        starts: int64 ``[k]`` last bar of each first observation (``>= first_valid + T - 1``).
        ends: int64 ``[k]`` last bar of each episode (the episode takes ``end - start`` steps).
        initial_equity: equity (all cash, flat) at the start.
        features, market, clock, max_position: as in :func:`step_kernel`.
        bar, state, counters: per-env state, updated in place.
        candles_out, account_out: observation outputs (rows ``env_ids`` are written).
    """
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    for j in range(env_ids.shape[0]):
        i = env_ids[j]
        bar[i] = starts[j]
        state[i, :] = 0.0
        state[i, S_CASH] = initial_equity
        state[i, S_EQUITY] = initial_equity
        counters[i, C_START] = starts[j]
        counters[i, C_END] = ends[j]
        counters[i, C_STEP] = 0
        counters[i, C_HELD] = 0
        write_observation(
            i, window, n_features, features_flat, market, clock, max_position, bar, state,
            counters, candles_flat, account_out,
        )  # fmt: skip


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
    discrete: bool,
    window: int,
    n_features: int,
    features_flat: np.ndarray,
    market: np.ndarray,
    clock: np.ndarray,
    max_position: float,
    trade_rate: float,
    financing_rate: float,
    equity_floor: float,
    bar: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    ledger: np.ndarray,
    record: bool,
    candles_flat: np.ndarray,
    account_out: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
    truncated_out: np.ndarray,
) -> bool:
    """Advance env ``i`` by one bar (see the module docstring); returns whether it is done.

    The target position is ``clip(action, -1, 1) * max_position`` (continuous) or
    ``(action - 1) * max_position`` (discrete 0 = short, 1 = flat, 2 = long). Equity at or
    below ``equity_floor`` is ruin: the equity is set to the floor, the position closed, and
    the env terminates. Reaching the episode's last bar truncates (unless ruined).
    ``features_flat`` / ``candles_flat`` are the flattened features and candle outputs
    (see :func:`write_observation`); the other arguments are those of :func:`step_kernel`.
    """
    if discrete:
        target = (action - 1.0) * max_position
    else:
        target = min(max(action, -1.0), 1.0) * max_position
    t = bar[i] + 1  # the bar we move into: fill at its open, mark at its close
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
        traded, cost = rebalance(equity_pre, held_old, target, trade_rate, financing_rate)
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

    if units == 0.0:
        counters[i, C_HELD] = 0
    elif (units > 0.0) != (units_old > 0.0) or units_old == 0.0:  # opened or flipped
        counters[i, C_HELD] = 1
        state[i, S_ENTRY_LOGRET] = logret_prev + math.log(equity_pre / equity_prev)
    else:
        counters[i, C_HELD] += 1
    state[i, S_CASH] = cash
    state[i, S_UNITS] = units
    state[i, S_EQUITY] = equity
    state[i, S_POSITION] = units * price_close / equity
    state[i, S_LOGRET] = logret_prev + reward
    state[i, S_REWARD] = reward
    state[i, S_COST] = cost
    counters[i, C_STEP] += 1
    bar[i] = t

    if record:
        row = counters[i, C_STEP] - 1
        ledger[i, row, L_POSITION] = position
        ledger[i, row, L_FILL] = fill
        ledger[i, row, L_UNITS] = units
        ledger[i, row, L_COST] = cost
        ledger[i, row, L_EQUITY] = equity
        ledger[i, row, L_REWARD] = reward

    reward_out[i] = reward
    at_end = t >= counters[i, C_END]
    done_out[i] = ruined or at_end
    truncated_out[i] = at_end and not ruined
    write_observation(
        i, window, n_features, features_flat, market, clock, max_position, bar, state,
        counters, candles_flat, account_out,
    )  # fmt: skip
    return ruined or at_end


@nb.njit(**_JIT)
def step_kernel(
    actions: np.ndarray,
    discrete: bool,
    features: np.ndarray,
    market: np.ndarray,
    clock: np.ndarray,
    max_position: float,
    trade_rate: float,
    financing_rate: float,
    equity_floor: float,
    bar: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    ledger: np.ndarray,
    record: bool,
    candles_out: np.ndarray,
    account_out: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
    truncated_out: np.ndarray,
) -> int:
    """Step every env once with ``actions``; serial loop over envs.

    Args:
        actions: float64 ``[N]`` raw actions (continuous in any range, clipped; discrete 0/1/2).
        discrete: whether actions are discrete codes.
        features: float32 ``[n_bars, F]``.
        market: float64 ``[n_bars, 3]`` open, close, ATR / close.
        clock: float32 ``[n_bars, 4]``.
        max_position: |target| at action +-1 (fraction of equity).
        trade_rate: cost per unit of traded notional (fraction, see :mod:`envs.costs`).
        financing_rate: cost per unit of held notional per bar (fraction).
        equity_floor: ruin level (currency).
        bar, state, counters: per-env state, updated in place (the step's float64 reward and
            cost land in ``state[:, S_REWARD]`` and ``state[:, S_COST]``).
        ledger: float64 ``[N, L, 6]`` per-step records (written when ``record``).
        record: whether to write the ledger.
        candles_out: float32 ``[N, T, F]`` next observations' windows (written).
        account_out: float32 ``[N, A]`` next observations' account vectors (written).
        reward_out: float32 ``[N]`` rewards (written).
        done_out, truncated_out: bool ``[N]`` episode over; over by truncation (written).

    Returns:
        The number of envs whose episode ended, or ``-(i + 1)`` if the action of env ``i`` is
        invalid (then nothing was changed).
    """
    bad = check_actions(actions, discrete)
    if bad >= 0:
        return -(bad + 1)
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    n_done = 0
    for i in range(actions.shape[0]):
        if step_env(
            i, actions[i], discrete, window, n_features, features_flat, market, clock,
            max_position, trade_rate, financing_rate, equity_floor, bar, state, counters,
            ledger, record, candles_flat, account_out, reward_out, done_out, truncated_out,
        ):  # fmt: skip
            n_done += 1
    return n_done


@nb.njit(parallel=True, **_JIT)
def step_kernel_parallel(
    actions: np.ndarray,
    discrete: bool,
    features: np.ndarray,
    market: np.ndarray,
    clock: np.ndarray,
    max_position: float,
    trade_rate: float,
    financing_rate: float,
    equity_floor: float,
    bar: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    ledger: np.ndarray,
    record: bool,
    candles_out: np.ndarray,
    account_out: np.ndarray,
    reward_out: np.ndarray,
    done_out: np.ndarray,
    truncated_out: np.ndarray,
) -> int:
    """:func:`step_kernel` with the loop over envs spread over numba threads (opt-in)."""
    bad = check_actions(actions, discrete)
    if bad >= 0:
        return -(bad + 1)
    window, n_features = candles_out.shape[1], features.shape[1]
    features_flat = features.reshape(-1)
    candles_flat = candles_out.reshape(-1)
    n_done = 0
    for i in nb.prange(actions.shape[0]):
        if step_env(
            i, actions[i], discrete, window, n_features, features_flat, market, clock,
            max_position, trade_rate, financing_rate, equity_floor, bar, state, counters,
            ledger, record, candles_flat, account_out, reward_out, done_out, truncated_out,
        ):  # fmt: skip
            n_done += 1
    return n_done
