"""Per-bar candle features, computed once per dataset by numba kernels.

Every feature of bar ``t`` depends only on bars ``<= t`` (causal), is scale-free (the same
for a price series multiplied by a constant) and is O(1). There is no per-window
normalisation: a bar's features never depend on where an observation window starts, so an
encoder may encode a whole series once and look bars up by index.

Features (``FEATURE_NAMES``, in column order), with ``ATR`` = Wilder's average true range
over ``ATR_PERIOD`` bars (price units) as the causal volatility scale:

==================  ==========================================================================
``close_open``      ``(close - open) / ATR``: candle body
``high_open``       ``(high - open) / ATR``: upper reach (>= 0)
``low_open``        ``(low - open) / ATR``: lower reach (<= 0)
``log_volume``      ``log(volume_t / volume_{t-1})`` (0 when either volume is 0)
``rsi``             ``(RSI - 50) / 50``, Wilder's RSI over ``RSI_PERIOD`` bars, in [-1, 1]
``cci``             ``CCI / 100``, Lambert's commodity channel index over ``CCI_PERIOD`` bars
``atr_ratio``       ``log(ATR / ATR_slow)``: volatility now vs over ``ATR_SLOW_PERIOD`` bars
``macd``            ``(EMA_12(close) - EMA_26(close)) / ATR``
``macd_signal``     ``EMA_9(MACD) / ATR``
==================  ==========================================================================

Every value is clipped to ``[-FEATURE_CLIP, FEATURE_CLIP]`` (it only matters on
pathological bars, e.g. a gap after a dead-flat stretch).

Warm-up: each indicator is seeded the TA-Lib way (the first value of an average over ``n``
inputs is their simple mean, then the recursion starts), so it is undefined before its first
full window. ``first_valid`` is the first bar where every feature is defined
(``ATR_SLOW_PERIOD`` = 50); rows before it are zeros and never appear in an observation.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import pandas as pd

from data import load_candles

FEATURE_NAMES: tuple[str, ...] = (
    "close_open",
    "high_open",
    "low_open",
    "log_volume",
    "rsi",
    "cci",
    "atr_ratio",
    "macd",
    "macd_signal",
)
CLOCK_NAMES: tuple[str, ...] = ("tod_sin", "tod_cos", "dow_sin", "dow_cos")

ATR_PERIOD = 14
ATR_SLOW_PERIOD = 50
RSI_PERIOD = 14
CCI_PERIOD = 20
MACD_FAST = 12
MACD_SLOW = 26
MACD_SIGNAL = 9
FEATURE_CLIP = 10.0

#: First bar index at which every feature is defined (the slowest warm-up).
FIRST_VALID = max(
    ATR_SLOW_PERIOD,  # ATR over n true ranges (true range needs the previous close): bar n
    RSI_PERIOD,  # n price changes: bar n
    CCI_PERIOD - 1,  # n typical prices: bar n - 1
    MACD_SLOW - 1 + MACD_SIGNAL - 1,  # slow EMA at bar 25, signal EMA of 9 MACD values: bar 33
)


def compute_features(candles: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Features of every bar of ``candles``.

    Args:
        candles: OHLCV frame (validated with :func:`data.load_candles`).

    Returns:
        ``(features, first_valid)``: float32 ``[n_bars, F]`` C-contiguous, writable array with
        columns :data:`FEATURE_NAMES`, and the first bar whose features are all defined
        (earlier rows are zeros).

    Raises:
        ValueError: fewer than ``first_valid + 1`` bars.
    """
    _, features, _, first_valid = features_and_scale(candles)
    return features, first_valid


def compute_clock(index: pd.DatetimeIndex) -> np.ndarray:
    """Time-of-day and day-of-week harmonics of each bar's timestamp (its open time).

    Returns:
        float32 ``[n_bars, 4]``: ``sin, cos`` of ``2 pi hour / 24`` and of
        ``2 pi (weekday + hour / 24) / 7`` (Monday = 0), with fractional hours.
    """
    hours = (
        index.hour.to_numpy(np.float64)
        + index.minute.to_numpy(np.float64) / 60.0
        + index.second.to_numpy(np.float64) / 3600.0
    )
    week = index.day_of_week.to_numpy(np.float64) + hours / 24.0
    day_angle = 2.0 * np.pi * hours / 24.0
    week_angle = 2.0 * np.pi * week / 7.0
    clock = np.stack(
        [np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle)], axis=1
    )
    return np.ascontiguousarray(clock, dtype=np.float32)


def features_and_scale(
    candles: pd.DataFrame,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int]:
    """Validated candles, features, the relative volatility scale and ``first_valid``.

    The scale is ``ATR_t / close_t`` (float64 ``[n_bars]``, zeros before ``first_valid``):
    the typical one-bar move as a fraction of price, which the env uses to make account PnL
    values O(1).
    """
    candles = load_candles(candles)
    n = len(candles)
    if n <= FIRST_VALID:
        raise ValueError(
            f"candles have {n} bars; features need at least {FIRST_VALID + 1} "
            f"(warm-up of {FIRST_VALID} bars for the slowest indicator)."
        )
    cols = [np.array(candles[c].to_numpy(np.float64), dtype=np.float64) for c in _OHLCV]
    features = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    scale = np.zeros(n, dtype=np.float64)
    _features_kernel(*cols, features, scale)
    return candles, features, scale, FIRST_VALID


_OHLCV = ("open", "high", "low", "close", "volume")


@nb.njit(cache=True)
def _seeded_average(x: np.ndarray, first: int, period: int, alpha: float, out: np.ndarray) -> None:
    """Exponential average of ``x[first:]`` seeded with a simple mean (TA-Lib convention).

    ``out[first + period - 1]`` is the mean of ``x[first : first + period]``; after that
    ``out[t] = out[t-1] + alpha * (x[t] - out[t-1])``. Earlier entries are NaN.
    Wilder's smoothing is ``alpha = 1 / period``; the usual EMA is ``alpha = 2 / (period + 1)``.
    """
    out[:] = np.nan
    seed_at = first + period - 1
    if seed_at >= x.shape[0]:
        return
    total = 0.0
    for t in range(first, seed_at + 1):
        total += x[t]
    avg = total / period
    out[seed_at] = avg
    for t in range(seed_at + 1, x.shape[0]):
        avg += alpha * (x[t] - avg)
        out[t] = avg


@nb.njit(cache=True)
def _true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``max(high - low, |high - prev close|, |low - prev close|)``; bar 0 has no prev close."""
    n = high.shape[0]
    tr = np.empty(n)
    tr[0] = high[0] - low[0]
    for t in range(1, n):
        tr[t] = max(high[t] - low[t], abs(high[t] - close[t - 1]), abs(low[t] - close[t - 1]))
    return tr


@nb.njit(cache=True)
def _rsi(close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's RSI in [0, 100] (NaN before bar ``period``; 50 when nothing moved)."""
    n = close.shape[0]
    gain = np.zeros(n)
    loss = np.zeros(n)
    for t in range(1, n):
        change = close[t] - close[t - 1]
        gain[t] = max(change, 0.0)
        loss[t] = max(-change, 0.0)
    avg_gain = np.empty(n)
    avg_loss = np.empty(n)
    _seeded_average(gain, 1, period, 1.0 / period, avg_gain)
    _seeded_average(loss, 1, period, 1.0 / period, avg_loss)
    rsi = np.full(n, np.nan)
    for t in range(period, n):
        up, down = avg_gain[t], avg_loss[t]
        if down > 0.0:
            rsi[t] = 100.0 - 100.0 / (1.0 + up / down)
        elif up > 0.0:
            rsi[t] = 100.0
        else:
            rsi[t] = 50.0
    return rsi


@nb.njit(cache=True)
def _cci(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """Lambert's CCI: ``(TP - SMA(TP)) / (0.015 * mean |TP - SMA(TP)|)``, TP = (H + L + C) / 3.

    NaN before bar ``period - 1``; 0 when the typical price did not move over the window.
    """
    n = close.shape[0]
    tp = (high + low + close) / 3.0
    cci = np.full(n, np.nan)
    for t in range(period - 1, n):
        mean = 0.0
        for j in range(t - period + 1, t + 1):
            mean += tp[j]
        mean /= period
        dev = 0.0
        for j in range(t - period + 1, t + 1):
            dev += abs(tp[j] - mean)
        dev /= period
        cci[t] = (tp[t] - mean) / (0.015 * dev) if dev > 0.0 else 0.0
    return cci


@nb.njit(cache=True)
def _clip(x: float) -> float:
    if x > FEATURE_CLIP:
        return FEATURE_CLIP
    if x < -FEATURE_CLIP:
        return -FEATURE_CLIP
    return x


@nb.njit(cache=True)
def _features_kernel(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    out: np.ndarray,
    scale: np.ndarray,
) -> None:
    """Fill ``out[t, :]`` (float32 ``[n, F]``) and ``scale[t] = ATR_t / close_t`` for every
    ``t >= FIRST_VALID``; earlier rows are left as they are (zeros from the caller).

    Args:
        open_, high, low, close, volume: float64 ``[n]`` candle columns.
        out: float32 ``[n, len(FEATURE_NAMES)]`` output.
        scale: float64 ``[n]`` output: the relative volatility scale the env normalises
            account PnL with.
    """
    n = close.shape[0]
    tr = _true_range(high, low, close)
    atr = np.empty(n)
    atr_slow = np.empty(n)
    _seeded_average(tr, 1, ATR_PERIOD, 1.0 / ATR_PERIOD, atr)
    _seeded_average(tr, 1, ATR_SLOW_PERIOD, 1.0 / ATR_SLOW_PERIOD, atr_slow)
    rsi = _rsi(close, RSI_PERIOD)
    cci = _cci(high, low, close, CCI_PERIOD)
    ema_fast = np.empty(n)
    ema_slow = np.empty(n)
    _seeded_average(close, 0, MACD_FAST, 2.0 / (MACD_FAST + 1), ema_fast)
    _seeded_average(close, 0, MACD_SLOW, 2.0 / (MACD_SLOW + 1), ema_slow)
    macd = ema_fast - ema_slow  # defined from bar MACD_SLOW - 1
    signal = np.empty(n)
    _seeded_average(macd, MACD_SLOW - 1, MACD_SIGNAL, 2.0 / (MACD_SIGNAL + 1), signal)

    for t in range(FIRST_VALID, n):
        a = atr[t]
        inv = 1.0 / a if a > 0.0 else 0.0
        out[t, 0] = _clip((close[t] - open_[t]) * inv)
        out[t, 1] = _clip((high[t] - open_[t]) * inv)
        out[t, 2] = _clip((low[t] - open_[t]) * inv)
        if volume[t] > 0.0 and volume[t - 1] > 0.0:
            out[t, 3] = _clip(np.log(volume[t] / volume[t - 1]))
        else:
            out[t, 3] = 0.0
        out[t, 4] = (rsi[t] - 50.0) / 50.0
        out[t, 5] = _clip(cci[t] / 100.0)
        slow = atr_slow[t]
        out[t, 6] = _clip(np.log(a / slow)) if a > 0.0 and slow > 0.0 else 0.0
        out[t, 7] = _clip(macd[t] * inv)
        out[t, 8] = _clip(signal[t] * inv)
        scale[t] = a / close[t]
