"""Synthetic markets: deterministic per seed, valid candles, planted statistics measurable."""

from __future__ import annotations

import numpy as np
import pytest

from data import find_defects, load_candles, synthetic


def lag1(candles) -> float:
    r = np.diff(np.log(candles["close"].to_numpy()))
    return float(np.corrcoef(r[1:], r[:-1])[0, 1])


@pytest.mark.parametrize("name", ["gbm", "ar1", "regime", "echo"])
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


def lagged_ols_rel_mse(r: np.ndarray, lags: int) -> float:
    """Out-of-sample MSE / MSE(0) of OLS on the last ``lags`` returns (fit 1st half, score 2nd).

    The oracle of a market whose memory is at most ``lags`` bars: with Gaussian returns the
    best linear predictor is the best predictor.
    """
    x = np.stack([r[lags - k : len(r) - k] for k in range(1, lags + 1)], axis=1)  # [n, lags]
    y = r[lags:]
    half = len(y) // 2
    beta, *_ = np.linalg.lstsq(x[:half], y[:half], rcond=None)
    resid = y[half:] - x[half:] @ beta
    return float(np.mean(resid**2) / np.mean(y[half:] ** 2))


@pytest.mark.parametrize(("lag", "coef"), [(48, 0.5), (12, -0.4)])
def test_echo_needs_exactly_lag_bars_of_history(lag: int, coef: float) -> None:
    # 40k bars: the OLS fit on ~20k bars with up to 48 regressors overfits by ~lags/20k ~ 0.25%.
    r = np.diff(np.log(synthetic.echo(40_000, lag=lag, coef=coef, vol=0.002, seed=7)["close"]))
    bayes = 1.0 - coef**2
    # A history of `lag` bars recovers the planted dependence down to the Bayes limit...
    assert lagged_ols_rel_mse(r, lag) == pytest.approx(bayes, abs=0.03)
    # ...one bar less sees only noise: no better than predicting 0.
    assert lagged_ols_rel_mse(r, lag - 1) > 0.99
    # The oracle's single coefficient is the echo, and the series has the stated scale.
    x, y = r[:-lag], r[lag:]
    assert float(x @ y / (x @ x)) == pytest.approx(coef, abs=0.03)
    assert r.std() == pytest.approx(0.002, rel=0.03)


def test_echo_has_no_autocorrelation_between_echoes() -> None:
    r = np.diff(np.log(synthetic.echo(50_000, lag=48, coef=0.5, seed=3)["close"]))
    acf = {k: float(np.corrcoef(r[k:], r[:-k])[0, 1]) for k in (1, 2, 24, 47, 48, 49, 96)}
    # sd of each estimate ~ 1/sqrt(50k) = 0.0045
    assert all(abs(acf[k]) < 0.02 for k in (1, 2, 24, 47, 49))
    assert acf[48] == pytest.approx(0.5, abs=0.02) and acf[96] == pytest.approx(0.25, abs=0.02)


def test_bad_parameters_are_clear() -> None:
    with pytest.raises(ValueError, match="phi"):
        synthetic.ar1(100, phi=1.0)
    with pytest.raises(ValueError, match="vol"):
        synthetic.gbm(100, vol=0.0)
    with pytest.raises(ValueError, match="unknown synthetic market"):
        synthetic.generate("garch", 100)
    with pytest.raises(ValueError, match="lag"):
        synthetic.echo(100, lag=0)
    with pytest.raises(ValueError, match="coef"):
        synthetic.echo(100, coef=-1.0)
