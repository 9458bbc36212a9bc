"""Synthetic markets: deterministic per seed, valid candles, planted statistics measurable."""

from __future__ import annotations

import numpy as np
import pytest

from data import find_defects, load_candles, synthetic


def lag1(candles) -> float:
    r = np.diff(np.log(candles["close"].to_numpy()))
    return float(np.corrcoef(r[1:], r[:-1])[0, 1])


@pytest.mark.parametrize("name", ["gbm", "ar1", "regime"])
def test_deterministic_per_seed_and_valid(name: str) -> None:
    a = synthetic.generate(name, 500, seed=3)
    b = synthetic.generate(name, 500, seed=3)
    c = synthetic.generate(name, 500, seed=4)
    assert a.equals(b) and not a.equals(c)
    assert find_defects(a) == []
    assert load_candles(a).shape == (500, 5)


@pytest.mark.parametrize("phi", [0.3, -0.2])
def test_ar1_autocorrelation_is_phi(phi: float) -> None:
    # sd of the lag-1 estimate on 50k bars is ~1/sqrt(50k) = 0.0045
    assert lag1(synthetic.ar1(50_000, phi=phi, seed=1)) == pytest.approx(phi, abs=0.02)


def test_gbm_has_no_autocorrelation_and_given_vol() -> None:
    candles = synthetic.gbm(50_000, vol=0.003, seed=2)
    assert abs(lag1(candles)) < 0.02
    r = np.diff(np.log(candles["close"].to_numpy()))
    assert r.std() == pytest.approx(0.003, rel=0.03)


def test_regime_autocorrelation_follows_state() -> None:
    candles = synthetic.regime(50_000, phis=(0.4, -0.4), p_stay=0.99, seed=5)
    state = candles.attrs["regime"]
    r = np.diff(np.log(candles["close"].to_numpy()))
    s = state[1:][1:]
    x, y = r[:-1], r[1:]
    trend = np.corrcoef(x[s == 0], y[s == 0])[0, 1]
    revert = np.corrcoef(x[s == 1], y[s == 1])[0, 1]
    assert trend == pytest.approx(0.4, abs=0.05) and revert == pytest.approx(-0.4, abs=0.05)


def test_bad_parameters_are_clear() -> None:
    with pytest.raises(ValueError, match="phi"):
        synthetic.ar1(100, phi=1.0)
    with pytest.raises(ValueError, match="vol"):
        synthetic.gbm(100, vol=0.0)
    with pytest.raises(ValueError, match="unknown synthetic market"):
        synthetic.generate("garch", 100)
