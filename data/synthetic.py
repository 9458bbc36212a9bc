"""Seeded synthetic candle markets whose edge is known exactly: the ground truth for tests,
calibration of the evaluator, and demos.

Every generator draws per-bar log returns ``r_t = log(close_t / close_{t-1})`` from a stated
process, then builds consistent OHLC candles by simulating the intra-bar path as a Brownian
bridge pinned to the bar's return (``open_t = close_{t-1}``, ``high``/``low`` are the path's
extremes), and a positive volume. Timestamps are hourly (``freq``) in UTC.

What edge each market contains (this is what the evaluator is calibrated against):

* :func:`gbm` -- i.i.d. Gaussian log returns. Past bars carry **no** information about the
  next return, so no policy has an edge beyond the drift (a driftless GBM has none at all).
* :func:`ar1` -- log returns follow a stationary AR(1), ``r_t = mu + phi (r_{t-1} - mu) + e_t``
  with ``sd(r_t) = vol``. The best causal predictor of ``r_{t+1}`` is ``mu + phi (r_t - mu)``:
  holding ``sign(phi * r_t)`` earns ``E|r| * |phi| ~= 0.8 vol |phi|`` per bar before costs.
* :func:`regime` -- a two-state Markov chain switches between a trending (``phi > 0``) and a
  mean-reverting (``phi < 0``) AR(1) regime. The edge exists only for a policy that infers the
  current regime from recent bars; a fixed-sign AR rule earns about nothing on average.
* :func:`echo` -- a **long-memory** market: each return echoes the one ``lag`` bars earlier,
  ``r_t = coef r_{t-lag} + e_t``, and is independent of the ``lag - 1`` bars in between. The
  edge exists only for a model that sees ``lag`` bars back: predicting ``r_{t+1}`` at bar
  ``t`` needs ``r_{t+1-lag}``, so a history (receptive field) of at least ``lag`` bars
  including bar ``t``. With less history the best predictor is 0 (MSE = ``vol^2``); with
  enough it is ``coef r_{t+1-lag}`` (MSE = ``(1 - coef^2) vol^2``), and holding
  ``sign(coef r_{t+1-lag})`` earns ``~= 0.8 vol |coef|`` per bar before costs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Sub-steps of the simulated intra-bar path that sets each bar's high and low.
INTRABAR_STEPS = 16


def gbm(
    n_bars: int,
    *,
    drift: float = 0.0,
    vol: float = 0.002,
    seed: int = 0,
    start: str = "2020-01-01",
    freq: str = "1h",
    price0: float = 1.0,
) -> pd.DataFrame:
    """Geometric Brownian motion: i.i.d. log returns ``r_t ~ N(drift - vol^2 / 2, vol^2)``.

    Args:
        n_bars: number of candles.
        drift: expected simple return per bar (0 = no edge at all).
        vol: standard deviation of the per-bar log return.
        seed: seed of the generator; the same seed gives the same candles.
        start: timestamp of the first bar (UTC).
        freq: bar spacing (pandas offset alias).
        price0: open of the first bar.

    Returns:
        Candles: ``DatetimeIndex`` named ``time`` and float64 ``open high low close volume``.
    """
    _check_common(n_bars, vol)
    rng = np.random.default_rng(seed)
    returns = (drift - 0.5 * vol**2) + vol * rng.standard_normal(n_bars)
    return _candles_from_returns(returns, rng, start=start, freq=freq, price0=price0, vol=vol)


def ar1(
    n_bars: int,
    *,
    phi: float = 0.2,
    vol: float = 0.002,
    mu: float = 0.0,
    seed: int = 0,
    start: str = "2020-01-01",
    freq: str = "1h",
    price0: float = 1.0,
) -> pd.DataFrame:
    """Stationary AR(1) log returns: ``r_t = mu + phi (r_{t-1} - mu) + sqrt(1 - phi^2) vol e_t``.

    The lag-1 autocorrelation of the returns is ``phi`` and their standard deviation ``vol``,
    so a policy that holds ``sign(phi * r_t)`` for the next bar has a planted, learnable edge.

    Args:
        n_bars: number of candles.
        phi: AR coefficient in (-1, 1); the planted edge grows with ``|phi|``.
        vol: stationary standard deviation of the per-bar log return.
        mu: mean log return per bar.
        seed: seed of the generator.
        start: timestamp of the first bar (UTC).
        freq: bar spacing (pandas offset alias).
        price0: open of the first bar.

    Returns:
        Candles as in :func:`gbm`.
    """
    _check_common(n_bars, vol)
    if not -1.0 < phi < 1.0:
        raise ValueError(f"ar1: phi must be in (-1, 1) for a stationary process, got {phi}.")
    rng = np.random.default_rng(seed)
    shocks = np.sqrt(1.0 - phi**2) * vol * rng.standard_normal(n_bars)
    phis = np.full(n_bars, phi)
    returns = _ar_recursion(shocks, phis, mu, first=vol * rng.standard_normal())
    return _candles_from_returns(returns, rng, start=start, freq=freq, price0=price0, vol=vol)


def regime(
    n_bars: int,
    *,
    phis: tuple[float, float] = (0.3, -0.3),
    p_stay: float = 0.995,
    vol: float = 0.002,
    seed: int = 0,
    start: str = "2020-01-01",
    freq: str = "1h",
    price0: float = 1.0,
) -> pd.DataFrame:
    """Markov-switching AR(1): a trending and a mean-reverting regime.

    The hidden state ``s_t`` in {0, 1} stays with probability ``p_stay`` per bar (mean regime
    length ``1 / (1 - p_stay)`` bars); returns follow ``r_t = phis[s_t] r_{t-1} + sqrt(1 -
    phis[s_t]^2) vol e_t``. The state is returned in the frame's ``attrs["regime"]``.

    Args:
        n_bars: number of candles.
        phis: AR coefficient of each regime, each in (-1, 1).
        p_stay: probability of staying in the current regime, in (0, 1).
        vol: standard deviation of the per-bar log-return shock scale.
        seed: seed of the generator.
        start: timestamp of the first bar (UTC).
        freq: bar spacing (pandas offset alias).
        price0: open of the first bar.

    Returns:
        Candles as in :func:`gbm`, with the regime path ``int8 [n_bars]`` in ``attrs["regime"]``.
    """
    _check_common(n_bars, vol)
    if not all(-1.0 < p < 1.0 for p in phis) or len(phis) != 2:
        raise ValueError(f"regime: phis must be two AR coefficients in (-1, 1), got {phis}.")
    if not 0.0 < p_stay < 1.0:
        raise ValueError(f"regime: p_stay must be in (0, 1), got {p_stay}.")
    rng = np.random.default_rng(seed)
    switches = rng.random(n_bars) > p_stay
    state = (np.cumsum(switches) + rng.integers(2)) % 2
    phi_t = np.asarray(phis)[state]
    shocks = np.sqrt(1.0 - phi_t**2) * vol * rng.standard_normal(n_bars)
    returns = _ar_recursion(shocks, phi_t, 0.0, first=vol * rng.standard_normal())
    candles = _candles_from_returns(returns, rng, start=start, freq=freq, price0=price0, vol=vol)
    candles.attrs["regime"] = state.astype(np.int8)
    return candles


def echo(
    n_bars: int,
    *,
    lag: int = 48,
    coef: float = 0.5,
    vol: float = 0.002,
    seed: int = 0,
    start: str = "2020-01-01",
    freq: str = "1h",
    price0: float = 1.0,
) -> pd.DataFrame:
    """Return echo at lag ``L``: ``r_t = coef r_{t-L} + sqrt(1 - coef^2) vol e_t``.

    A seasonal AR(1): every residue class ``t mod L`` is its own AR(1) with coefficient
    ``coef``, and the classes are independent. So ``r_t`` has standard deviation ``vol``,
    autocorrelation ``coef^k`` at lags ``k L`` and **exactly zero** at every other lag:
    bars ``t - L + 1 .. t - 1`` carry no information about ``r_t`` (Gaussian, independent),
    only ``r_{t-L}`` (and ``r_{t-2L}``, ... through it) does. A predictor of ``r_{t+1}`` whose
    history ends at bar ``t`` needs ``L`` bars (``t + 1 - L .. t``) to beat predicting 0;
    with them its best relative MSE is ``1 - coef^2`` (0.75 for the default ``coef`` 0.5).

    Args:
        n_bars: number of candles.
        lag: echo lag ``L`` in bars, >= 1 (``lag = 1`` is :func:`ar1` with ``phi = coef``).
        coef: echo coefficient in (-1, 1); the planted edge grows with ``|coef|``.
        vol: stationary standard deviation of the per-bar log return.
        seed: seed of the generator.
        start: timestamp of the first bar (UTC).
        freq: bar spacing (pandas offset alias).
        price0: open of the first bar.

    Returns:
        Candles as in :func:`gbm`, with ``attrs["lag"]`` and ``attrs["coef"]``.
    """
    _check_common(n_bars, vol)
    if int(lag) != lag or lag < 1:
        raise ValueError(f"echo: lag must be an integer >= 1, got {lag}.")
    if not -1.0 < coef < 1.0:
        raise ValueError(f"echo: coef must be in (-1, 1) for a stationary process, got {coef}.")
    lag = int(lag)
    rng = np.random.default_rng(seed)
    n_rows = -(-n_bars // lag)
    shocks = np.sqrt(1.0 - coef**2) * vol * rng.standard_normal((n_rows, lag))  # [rows, L]
    prev = vol * rng.standard_normal(lag)  # r_{-L .. -1}, drawn from the stationary law
    rows = np.empty_like(shocks)  # row i holds bars i*L .. i*L + L - 1
    for i in range(n_rows):  # one AR(1) step for all L residue classes at once
        prev = coef * prev + shocks[i]
        rows[i] = prev
    returns = rows.reshape(-1)[:n_bars]
    candles = _candles_from_returns(returns, rng, start=start, freq=freq, price0=price0, vol=vol)
    candles.attrs["lag"], candles.attrs["coef"] = lag, float(coef)
    return candles


GENERATORS = {"gbm": gbm, "ar1": ar1, "regime": regime, "echo": echo}


def generate(name: str, n_bars: int, **params: float) -> pd.DataFrame:
    """Call a generator by name (``"gbm"``, ``"ar1"``, ``"regime"``, ``"echo"``), e.g. from YAML."""
    if name not in GENERATORS:
        raise ValueError(f"unknown synthetic market {name!r}; choose one of {sorted(GENERATORS)}.")
    return GENERATORS[name](n_bars, **params)


def _check_common(n_bars: int, vol: float) -> None:
    if int(n_bars) != n_bars or n_bars < 2:
        raise ValueError(f"n_bars must be an integer >= 2, got {n_bars}.")
    if not vol > 0:
        raise ValueError(f"vol must be > 0, got {vol}.")


def _ar_recursion(shocks: np.ndarray, phis: np.ndarray, mu: float, first: float) -> np.ndarray:
    """``r_t = mu + phi_t (r_{t-1} - mu) + shock_t`` with ``r_{-1} = mu + first``. Shapes [n]."""
    out = np.empty_like(shocks)
    prev = first
    for t in range(shocks.shape[0]):
        prev = phis[t] * prev + shocks[t]
        out[t] = prev
    return out + mu


def _candles_from_returns(
    returns: np.ndarray,
    rng: np.random.Generator,
    *,
    start: str,
    freq: str,
    price0: float,
    vol: float,
) -> pd.DataFrame:
    """Build OHLCV candles whose close-to-close log returns are exactly ``returns`` [n]."""
    n, m = returns.shape[0], INTRABAR_STEPS
    if not price0 > 0:
        raise ValueError(f"price0 must be > 0, got {price0}.")
    log_close = np.log(price0) + np.cumsum(returns)
    log_open = np.concatenate([[np.log(price0)], log_close[:-1]])
    # Brownian bridge from 0 to r_t inside each bar: [n, m] cumulative path, last column = r_t.
    steps = rng.standard_normal((n, m)) * (vol / np.sqrt(m))
    walk = np.cumsum(steps, axis=1)
    frac = np.arange(1, m + 1) / m
    path = walk - frac * (walk[:, -1:] - returns[:, None])
    hi = np.maximum(path.max(axis=1), 0.0)
    lo = np.minimum(path.min(axis=1), 0.0)
    volume = np.round(1000.0 * np.exp(0.3 * rng.standard_normal(n)) * (1.0 + np.abs(returns) / vol))
    index = pd.date_range(start=start, periods=n, freq=freq, tz="UTC", name="time")
    open_, close = np.exp(log_open), np.exp(log_close)
    # max/min with open and close guard against 1-ulp rounding of exp() at the path's ends.
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(np.exp(log_open + hi), np.maximum(open_, close)),
            "low": np.minimum(np.exp(log_open + lo), np.minimum(open_, close)),
            "close": close,
            "volume": volume.astype(np.float64),
        },
        index=index,
    )
