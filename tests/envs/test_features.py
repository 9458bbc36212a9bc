"""Candle features: numba kernels equal a plain numpy/pandas reference; causal; scale-free."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data import synthetic
from envs import FEATURE_NAMES, compute_features
from envs.features import (
    ATR_PERIOD,
    ATR_SLOW_PERIOD,
    CCI_PERIOD,
    FEATURE_CLIP,
    FIRST_VALID,
    MACD_FAST,
    MACD_SIGNAL,
    MACD_SLOW,
    RSI_PERIOD,
    compute_clock,
)


# ---------------------------------------------------------------------- numpy reference
def _seeded(x: np.ndarray, first: int, period: int, alpha: float) -> np.ndarray:
    """Exponential average seeded by the mean of its first ``period`` inputs (plain numpy)."""
    out = np.full(len(x), np.nan)
    seed_at = first + period - 1
    out[seed_at] = np.mean(x[first : seed_at + 1])
    for t in range(seed_at + 1, len(x)):
        out[t] = (1.0 - alpha) * out[t - 1] + alpha * x[t]
    return out


def reference_features(candles: pd.DataFrame) -> np.ndarray:
    """Every feature written out with numpy/pandas, independently of the numba kernels."""
    o, h, lo, c, v = (
        candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    prev = np.concatenate([[np.nan], c[:-1]])
    tr = np.nanmax(np.stack([h - lo, np.abs(h - prev), np.abs(lo - prev)]), axis=0)
    atr = _seeded(tr, 1, ATR_PERIOD, 1 / ATR_PERIOD)
    atr_slow = _seeded(tr, 1, ATR_SLOW_PERIOD, 1 / ATR_SLOW_PERIOD)

    change = np.diff(c, prepend=np.nan)
    gain = _seeded(np.clip(np.nan_to_num(change), 0, None), 1, RSI_PERIOD, 1 / RSI_PERIOD)
    loss = _seeded(np.clip(-np.nan_to_num(change), 0, None), 1, RSI_PERIOD, 1 / RSI_PERIOD)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsi = np.where(loss > 0, 100 - 100 / (1 + gain / loss), np.where(gain > 0, 100.0, 50.0))

    tp = pd.Series((h + lo + c) / 3)
    sma = tp.rolling(CCI_PERIOD).mean()
    mad = tp.rolling(CCI_PERIOD).apply(lambda w: np.mean(np.abs(w - w.mean())), raw=True)
    cci = ((tp - sma) / (0.015 * mad)).where(mad > 0, 0.0).to_numpy()

    ema_fast = _seeded(c, 0, MACD_FAST, 2 / (MACD_FAST + 1))
    ema_slow = _seeded(c, 0, MACD_SLOW, 2 / (MACD_SLOW + 1))
    macd = ema_fast - ema_slow
    signal = _seeded(macd, MACD_SLOW - 1, MACD_SIGNAL, 2 / (MACD_SIGNAL + 1))

    with np.errstate(divide="ignore", invalid="ignore"):
        logvol = np.log(v / np.concatenate([[np.nan], v[:-1]]))
    logvol = np.where((v > 0) & (np.concatenate([[0.0], v[:-1]]) > 0), logvol, 0.0)
    cols = [
        (c - o) / atr,
        (h - o) / atr,
        (lo - o) / atr,
        logvol,
        (rsi - 50) / 50,
        cci / 100,
        np.log(atr / atr_slow),
        macd / atr,
        signal / atr,
    ]
    out = np.clip(np.stack(cols, axis=1), -FEATURE_CLIP, FEATURE_CLIP)
    out[:FIRST_VALID] = 0.0
    return out.astype(np.float32)


def _with_zero_volume(candles: pd.DataFrame) -> pd.DataFrame:
    out = candles.copy()
    out.iloc[[60, 61, 150], out.columns.get_loc("volume")] = 0.0
    return out


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("market", ["eurusd", "gbm_zero_volume", "ar1"])
def test_numba_features_equal_numpy_reference(market: str, request: pytest.FixtureRequest) -> None:
    if market == "eurusd":
        candles = request.getfixturevalue("eurusd")
    elif market == "gbm_zero_volume":
        candles = _with_zero_volume(request.getfixturevalue("gbm"))
    else:
        candles = synthetic.ar1(500, phi=0.3, seed=2)
    features, first_valid = compute_features(candles)
    expected = reference_features(candles)
    assert first_valid == FIRST_VALID
    np.testing.assert_allclose(features, expected, rtol=2e-5, atol=2e-6)


def test_reference_comparison_catches_a_look_ahead_bug(eurusd: pd.DataFrame) -> None:
    """The equality above is not vacuous: a reference fed next bar's close does not match."""
    features, _ = compute_features(eurusd)
    leaky = eurusd.copy()
    leaky["close"] = np.append(eurusd["close"].to_numpy()[1:], eurusd["close"].iloc[-1])
    leaky["high"] = np.maximum(leaky[["high", "close"]].max(axis=1), leaky["open"])
    leaky["low"] = np.minimum(leaky[["low", "close"]].min(axis=1), leaky["open"])
    assert not np.allclose(features, reference_features(leaky), rtol=2e-5, atol=2e-6)


def test_features_layout(eurusd: pd.DataFrame) -> None:
    features, first_valid = compute_features(eurusd)
    assert features.shape == (len(eurusd), len(FEATURE_NAMES)) == (6225, 9)
    assert features.dtype == np.float32
    assert features.flags["C_CONTIGUOUS"] and features.flags["WRITEABLE"]
    assert np.all(features[:first_valid] == 0.0)
    valid = features[first_valid:]
    assert np.isfinite(valid).all() and np.abs(valid).max() <= FEATURE_CLIP
    assert (valid.std(axis=0) > 0.05).all() and (np.abs(valid).mean(axis=0) < 2).all()  # O(1)


def test_features_are_causal(gbm: pd.DataFrame) -> None:
    """Features of a prefix equal the full series' features on that prefix."""
    full, _ = compute_features(gbm)
    for cut in (FIRST_VALID + 1, 120, 333):
        prefix, _ = compute_features(gbm.iloc[:cut])
        np.testing.assert_array_equal(prefix, full[:cut])


def test_features_are_scale_free(gbm: pd.DataFrame) -> None:
    scaled = gbm.copy()
    scaled[["open", "high", "low", "close"]] *= 1234.5
    scaled["volume"] *= 7.0
    np.testing.assert_allclose(compute_features(scaled)[0], compute_features(gbm)[0], atol=2e-5)


def test_too_few_bars_raise(gbm: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=f"at least {FIRST_VALID + 1}"):
        compute_features(gbm.iloc[:FIRST_VALID])


def test_clock_harmonics() -> None:
    index = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 06:00", "2024-01-07 18:00"], tz="UTC")
    clock = compute_clock(index)
    assert clock.dtype == np.float32 and clock.shape == (3, 4)
    np.testing.assert_allclose(clock[0], [0, 1, 0, 1], atol=1e-7)  # Monday 00:00
    np.testing.assert_allclose(clock[1, :2], [1, 0], atol=1e-7)  # 06:00 is a quarter day
    week = (6 + 18 / 24) / 7 * 2 * np.pi  # Sunday 18:00
    np.testing.assert_allclose(clock[2, 2:], [np.sin(week), np.cos(week)], atol=1e-6)
