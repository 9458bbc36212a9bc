"""Streaming statistics of K passes: everything the verdict and the report need, O(K) memory.

K passes of a backtest move through the test bars in lockstep, so every number of the
report and the verdict can be folded in chunk by chunk of bars instead of being computed
from ``[K, n_bars]`` ledgers. :class:`PassAccumulator` holds, for K passes:

* per pass (``[K]``): the total, the running mean and central moments M2..M4 (Sharpe,
  skewness, kurtosis: PSR/DSR/MinTRL), the downside sum (Sortino), the running equity peak,
  the deepest drawdown and the longest time under water, hit and profit-factor sums,
  turnover, trades, exposure, time in market, costs, and a histogram of the per-bar
  returns (VaR/CVaR);
* per pass and dispersion window (``[K, n_windows]``): the window totals (consistency);
* per bar (``[n_bars]``): the pass-averaged return and position (both edge tests);
* per pass at the plotting bars (``[K, n_plot]``): the cumulative log return (the bands'
  quantiles across passes, the deterministic and buy-and-hold lines) and the
  pass-averaged sigma.

Memory is ``O(K * (n_windows + n_plot + n_hist) + n_bars)`` per group of passes, instead
of ``O(K * n_bars)``. Every metric equals :func:`evaluation.stats.pass_metrics` on the full
arrays up to floating-point summation order (moments: Welford/Terriberry updates, Chan et
al. 1979, "Updating formulae and a pairwise algorithm for computing sample variances"),
except ``var_95`` / ``cvar_95``: those come from a histogram with bins of relative width
:data:`HIST_RELATIVE_WIDTH` (exact quantiles need every return), so they agree within one
bin. The band quantiles are exact at the plotting bars, which are every bar up to
:data:`PLOT_POINTS` bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from . import stats
from .passes import PassResult

PLOT_POINTS = 8192
"""Bars at which the bands and lines are kept: every bar of a shorter test period."""

HIST_BINS = 8192
"""Histogram bins per pass for VaR/CVaR."""

_HIST_SCALE = 1e-8  # returns are binned uniformly in asinh(r / scale)
_HIST_HALF = math.asinh(1.0 / _HIST_SCALE)  # |r| up to 1 (a 63% loss or 172% gain per bar)
HIST_RELATIVE_WIDTH = 2.0 * _HIST_HALF / HIST_BINS
"""Relative width of a histogram bin for |r| >> 1e-8 (about 0.5%): VaR/CVaR's resolution."""

_TRADE_TOLERANCE = stats.TRADE_TOLERANCE

# columns of the per-pass state
(
    _N, _MEAN, _M2, _M3, _M4, _TOTAL, _DOWN, _LOGEQ, _PEAK, _MINDD, _RUN, _MAXRUN, _ACTIVE,
    _WINS, _GAINS, _LOSSES, _TURNOVER, _PREV, _TRADES, _EXPOSURE, _INMARKET, _COSTS, _MIN,
    _MAX,
) = range(24)
_N_COLUMNS = 24


def plot_bars(n_bars: int, points: int = PLOT_POINTS) -> NDArray[np.int64]:
    """Bars at which bands and lines are kept: all of them, or ``points`` evenly spaced.

    The first and the last bar are always included.
    """
    if n_bars <= points:
        return np.arange(n_bars, dtype=np.int64)
    return np.unique(np.linspace(0, n_bars - 1, points).round().astype(np.int64))


def window_starts(n_bars: int, n_windows: int) -> NDArray[np.int64]:
    """First bar of each dispersion window, as :func:`evaluation.verdict.judge` splits them."""
    return np.array(
        [w[0] for w in np.array_split(np.arange(n_bars), n_windows)], dtype=np.int64
    )


@nb.njit(cache=True, error_model="numpy")
def _fold(
    returns: np.ndarray,
    positions: np.ndarray,
    costs: np.ndarray,
    first: int,
    window_of: np.ndarray,
    state: np.ndarray,
    window_totals: np.ndarray,
    hist_counts: np.ndarray,
    hist_sums: np.ndarray,
    hist_half: float,
    hist_scale: float,
) -> None:
    """Fold bars ``first .. first + C - 1`` of K passes (``[K, C]`` arrays) into the state."""
    n_passes, n_steps = returns.shape
    n_bins = hist_counts.shape[1]
    for k in range(n_passes):
        s = state[k]
        for j in range(n_steps):
            r = returns[k, j]
            p = positions[k, j]
            # moments: Terriberry's online update of the central moments M2..M4
            n1 = s[_N]
            n = n1 + 1.0
            delta = r - s[_MEAN]
            delta_n = delta / n
            delta_n2 = delta_n * delta_n
            term1 = delta * delta_n * n1
            s[_MEAN] += delta_n
            s[_M4] += (
                term1 * delta_n2 * (n * n - 3.0 * n + 3.0)
                + 6.0 * delta_n2 * s[_M2]
                - 4.0 * delta_n * s[_M3]
            )
            s[_M3] += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * s[_M2]
            s[_M2] += term1
            s[_N] = n
            s[_TOTAL] += r
            if r < 0.0:
                s[_DOWN] += r * r
                s[_LOSSES] -= r
            if r != 0.0:
                s[_ACTIVE] += 1.0
            if r > 0.0:
                s[_WINS] += 1.0
                s[_GAINS] += r
            s[_MIN] = min(s[_MIN], r)
            s[_MAX] = max(s[_MAX], r)
            # drawdown of equity exp(cumsum r) below its running peak (which starts at 0)
            log_eq = s[_LOGEQ] + r
            s[_LOGEQ] = log_eq
            peak = max(s[_PEAK], log_eq)
            s[_PEAK] = peak
            under = log_eq - peak
            s[_MINDD] = min(s[_MINDD], under)
            if under < 0.0:
                s[_RUN] += 1.0
                s[_MAXRUN] = max(s[_MAXRUN], s[_RUN])
            else:
                s[_RUN] = 0.0
            # trading
            change = abs(p - s[_PREV])
            s[_TURNOVER] += change
            if change > _TRADE_TOLERANCE:
                s[_TRADES] += 1.0
            s[_PREV] = p
            s[_EXPOSURE] += abs(p)
            if abs(p) > _TRADE_TOLERANCE:
                s[_INMARKET] += 1.0
            s[_COSTS] += costs[k, j]
            window_totals[k, window_of[first + j]] += r
            u = (math.asinh(r / hist_scale) + hist_half) / (2.0 * hist_half) * n_bins
            b = min(max(math.floor(u), 0), n_bins - 1)
            hist_counts[k, b] += 1
            hist_sums[k, b] += r


def _bin_edge(b: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Return value at the lower edge of histogram bin ``b`` (fractional bins interpolate)."""
    u = np.asarray(b, dtype=np.float64) / HIST_BINS * 2.0 * _HIST_HALF - _HIST_HALF
    return _HIST_SCALE * np.sinh(u)


class PassAccumulator:
    """Folds chunks of K passes' per-bar arrays, in bar order, into their statistics.

    Args:
        n_passes: K.
        times: ``[n_bars]`` the time each step's reward is marked at.
        n_windows: dispersion windows of the verdict.
        sigma: also average the policy's sigma over passes (at the plotting bars).
        keep_ledgers: also keep every per-bar array (for ``--keep-ledgers`` and tests).
        plot_points: see :data:`PLOT_POINTS`.
    """

    def __init__(
        self,
        n_passes: int,
        times: pd.DatetimeIndex,
        n_windows: int,
        *,
        sigma: bool = False,
        keep_ledgers: bool = False,
        plot_points: int = PLOT_POINTS,
    ) -> None:
        n_bars = len(times)
        self.n_passes, self.n_bars, self.times = int(n_passes), n_bars, times
        self.state = np.zeros((n_passes, _N_COLUMNS))
        self.state[:, _MIN] = np.inf
        self.state[:, _MAX] = -np.inf
        self.window_of = np.repeat(
            np.arange(n_windows, dtype=np.int64),
            np.diff(np.append(window_starts(n_bars, n_windows), n_bars)),
        )
        self.window_totals = np.zeros((n_passes, n_windows))
        self.hist_counts = np.zeros((n_passes, HIST_BINS), dtype=np.int64)
        self.hist_sums = np.zeros((n_passes, HIST_BINS))
        self.mean_returns = np.zeros(n_bars)
        self.mean_positions = np.zeros(n_bars)
        self.plot_bars = plot_bars(n_bars, plot_points)
        self.plot_cum = np.zeros((n_passes, self.plot_bars.size))
        self.sigma_mean = np.full(self.plot_bars.size, np.nan) if sigma else None
        self._log_eq = np.zeros(n_passes)
        self._filled = 0
        self._keep = keep_ledgers
        self._chunks: list[tuple[np.ndarray, ...]] = []

    def update(
        self,
        returns: np.ndarray,
        positions: np.ndarray,
        costs: np.ndarray,
        mean: np.ndarray | None = None,
        sigma: np.ndarray | None = None,
    ) -> None:
        """Fold the next ``C`` bars: ``[K, C]`` log returns, positions, costs (and mean,
        sigma of the policy, NaN where undefined)."""
        first, n = self._filled, returns.shape[1]
        if first + n > self.n_bars:
            raise ValueError(f"got bars up to {first + n}, the test period has {self.n_bars}.")
        returns = np.ascontiguousarray(returns, dtype=np.float64)
        positions = np.ascontiguousarray(positions, dtype=np.float64)
        costs = np.ascontiguousarray(costs, dtype=np.float64)
        _fold(
            returns, positions, costs, first, self.window_of, self.state, self.window_totals,
            self.hist_counts, self.hist_sums, _HIST_HALF, _HIST_SCALE,
        )
        bars = slice(first, first + n)
        self.mean_returns[bars] = returns.mean(axis=0)
        self.mean_positions[bars] = positions.mean(axis=0)
        # cumulative log return, summed in bar order like np.cumsum over the whole pass
        cum = np.cumsum(np.concatenate([self._log_eq[:, None], returns], axis=1), axis=1)[:, 1:]
        self._log_eq = cum[:, -1].copy()
        lo, hi = np.searchsorted(self.plot_bars, [first, first + n])
        self.plot_cum[:, lo:hi] = cum[:, self.plot_bars[lo:hi] - first]
        if self.sigma_mean is not None and sigma is not None and hi > lo:
            picked = sigma[:, self.plot_bars[lo:hi] - first]
            finite = np.isfinite(picked)
            with np.errstate(invalid="ignore", divide="ignore"):
                self.sigma_mean[lo:hi] = np.where(finite, picked, 0.0).sum(axis=0) / finite.sum(
                    axis=0
                )
        if self._keep:
            nan = np.full(returns.shape, np.nan, dtype=np.float32)
            self._chunks.append(
                (
                    positions, returns, costs,
                    nan if mean is None else np.asarray(mean, dtype=np.float32),
                    nan if sigma is None else np.asarray(sigma, dtype=np.float32),
                )
            )
        self._filled += n

    def finish(self) -> PassSummary:
        """The statistics of the passes, once every bar was folded in."""
        if self._filled != self.n_bars:
            raise ValueError(f"folded {self._filled} of {self.n_bars} bars.")
        ledgers = None
        if self._keep:
            cols = [np.concatenate([c[j] for c in self._chunks], axis=1) for j in range(5)]
            ledgers = PassResult(self.times, *cols)
        var, cvar = _tail_risk(self.hist_counts, self.hist_sums, self.state)
        return PassSummary(
            times=self.times,
            state=self.state.copy(),
            var_95=var,
            cvar_95=cvar,
            window_totals=self.window_totals.copy(),
            mean_returns=self.mean_returns,
            mean_positions=self.mean_positions,
            plot_bars=self.plot_bars,
            plot_cum=self.plot_cum,
            sigma_mean=self.sigma_mean,
            ledgers=ledgers,
        )


def _tail_risk(
    counts: NDArray[np.int64], sums: NDArray[np.float64], state: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-pass VaR 95% (numpy's linear quantile) and CVaR 95% from the return histograms.

    An order statistic is placed inside its bin as if the bin's returns were evenly spread
    (in the binning coordinate); CVaR averages the ``floor(0.05 (n - 1)) + 1`` smallest
    returns (the bin holding the last of them counts at its mean). Both are clipped to the
    pass's smallest and largest return, so constant passes are exact.
    """
    n_passes = counts.shape[0]
    var = np.empty(n_passes)
    cvar = np.empty(n_passes)
    for k in range(n_passes):
        n = int(state[k, _N])
        lo_r, hi_r = state[k, _MIN], state[k, _MAX]
        cum = np.cumsum(counts[k])

        def order_stat(j: int, cum=cum, k=k) -> float:
            b = int(np.searchsorted(cum, j, side="right"))
            before = int(cum[b - 1]) if b > 0 else 0
            return float(_bin_edge(b + (j - before + 0.5) / counts[k, b]))

        h = 0.05 * (n - 1)  # rank of the 5% quantile, as numpy's "linear" method
        j = math.floor(h)
        x0 = order_stat(j)
        x1 = order_stat(min(j + 1, n - 1))
        value = min(max(x0 + (h - j) * (x1 - x0), lo_r), hi_r)
        var[k] = value
        # CVaR: mean of the returns at or below the VaR, i.e. of the j + 1 smallest (distinct
        # values): whole bins, then the needed share of the last bin at its mean value
        m = j + 1
        b = int(np.searchsorted(cum, m - 1, side="right"))
        before = int(cum[b - 1]) if b > 0 else 0
        total = float(sums[k, :b].sum()) + sums[k, b] * (m - before) / counts[k, b]
        cvar[k] = min(max(total / m, lo_r), value)
    return var, cvar


@dataclass(frozen=True)
class PassSummary:
    """What the verdict and the report need of K passes over the same bars (see module doc)."""

    times: pd.DatetimeIndex  # [n_bars] time of the bar each step's reward is marked at
    state: np.ndarray  # float64 [K, 24] per-pass running sums (private layout)
    var_95: np.ndarray  # float64 [K] per-pass VaR 95% (histogram, see HIST_RELATIVE_WIDTH)
    cvar_95: np.ndarray  # float64 [K] per-pass CVaR 95%
    window_totals: np.ndarray  # float64 [K, n_windows] total log return per dispersion window
    mean_returns: np.ndarray  # float64 [n_bars] pass-averaged log return per bar
    mean_positions: np.ndarray  # float64 [n_bars] pass-averaged position per bar
    plot_bars: np.ndarray  # int64 [P] bars kept for plots
    plot_cum: np.ndarray  # float64 [K, P] cumulative log return at those bars
    sigma_mean: np.ndarray | None  # float64 [P] sigma averaged over passes (None: no policy)
    ledgers: PassResult | None = None  # every per-bar array, when asked for

    @property
    def n_passes(self) -> int:
        return int(self.state.shape[0])

    @property
    def n_bars(self) -> int:
        return len(self.times)

    @property
    def totals(self) -> np.ndarray:
        """float64 ``[K]``: total log return of each pass."""
        return self.state[:, _TOTAL].copy()

    @property
    def exposures(self) -> np.ndarray:
        """float64 ``[K]``: mean gross exposure ``mean_t |p_t|`` of each pass."""
        return self.state[:, _EXPOSURE] / self.state[:, _N]

    @property
    def turnovers(self) -> np.ndarray:
        """float64 ``[K]``: total turnover ``sum_t |p_t - p_{t-1}|`` of each pass."""
        return self.state[:, _TURNOVER].copy()

    @property
    def cost_totals(self) -> np.ndarray:
        """float64 ``[K]``: costs paid by each pass (sum of per-bar fractions of equity)."""
        return self.state[:, _COSTS].copy()

    def rows(self, index: slice) -> PassSummary:
        """The passes ``index`` selects; per-bar means are recomputed only with ledgers."""
        ledgers = None if self.ledgers is None else self.ledgers.rows(index)
        means = (self.mean_returns, self.mean_positions)
        if ledgers is not None:
            means = (ledgers.log_returns.mean(axis=0), ledgers.positions.mean(axis=0))
        return PassSummary(
            self.times, self.state[index], self.var_95[index], self.cvar_95[index],
            self.window_totals[index], *means, self.plot_bars, self.plot_cum[index],
            self.sigma_mean, ledgers,
        )

    def sharpes(self) -> np.ndarray:
        """float64 ``[K]``: per-bar Sharpe ratio of each pass (nan for constant returns)."""
        return np.array([self._moments(k)[0] for k in range(self.n_passes)])

    def _moments(self, k: int) -> tuple[float, float, float, int]:
        """:func:`evaluation.stats.return_moments` of pass ``k``."""
        s = self.state[k]
        n = int(s[_N])
        if s[_MAX] - s[_MIN] == 0.0:
            return math.nan, 0.0, 3.0, n
        m2, m3, m4 = s[_M2] / n, s[_M3] / n, s[_M4] / n
        sd = math.sqrt(s[_M2] / (n - 1))
        sr = s[_MEAN] / sd if sd > 0.0 else math.nan
        if m2 > 0.0:
            return sr, m3 / m2**1.5, m4 / m2**2, n
        return sr, 0.0, 3.0, n

    def metrics(
        self,
        k: int,
        trial_sharpes: np.ndarray | None = None,
        bars_per_year: float | None = None,
        *,
        trials: tuple[int, float] | None = None,
    ) -> dict[str, float]:
        """:func:`evaluation.stats.pass_metrics` of pass ``k`` (same keys, same formulas).

        ``trials = (n_trials, sr_variance)`` deflates the DSR against the real trials (the
        configs x checkpoints x seeds behind the selection) instead of ``trial_sharpes``.
        """
        s = self.state[k]
        n = int(s[_N])
        if n < 2:
            raise ValueError("metrics need at least 2 bars.")
        bpy = stats.infer_bars_per_year(self.times) if bars_per_year is None else bars_per_year
        years = n / bpy
        sr, skew, kurt, _ = self._moments(k)
        n_trials, sr_var = 1, 0.0
        if trial_sharpes is not None:
            ts = np.asarray(trial_sharpes, dtype=np.float64)
            if not np.all(np.isfinite(ts)):
                raise ValueError("trial_sharpes has a non-finite value.")
            n_trials = int(ts.size)
            sr_var = float(np.var(ts, ddof=1)) if n_trials > 1 else 0.0
        if trials is not None:
            n_trials, sr_var = int(trials[0]), float(trials[1])
        mean = s[_TOTAL] / n
        sd = math.sqrt(s[_M2] / (n - 1))
        constant = s[_MAX] - s[_MIN] == 0.0
        ann = math.sqrt(bpy)
        dd = math.sqrt(s[_DOWN] / n)
        if dd == 0.0:
            sortino = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
        else:
            sortino = mean / dd * ann
        mdd = float(np.expm1(min(s[_MINDD], 0.0)))
        cagr = float(np.expm1(mean * bpy))
        if s[_GAINS] == 0.0 and s[_LOSSES] == 0.0:
            pf = math.nan
        else:
            pf = math.inf if s[_LOSSES] == 0.0 else s[_GAINS] / s[_LOSSES]
        min_trl = stats.min_track_record_length(sr, skew=skew, kurtosis=kurt)
        return {
            "n_bars": float(n),
            "bars_per_year": float(bpy),
            "years": float(years),
            "total_log_return": float(s[_TOTAL]),
            "annualized_log_return": float(mean * bpy),
            "cagr": cagr,
            "annualized_volatility": float(sd * ann),
            "sharpe": math.nan if (sd == 0.0 or constant) else float(mean / sd * ann),
            "sortino": float(sortino),
            "calmar": math.nan if mdd == 0.0 else cagr / abs(mdd),
            "max_drawdown": mdd,
            "max_drawdown_duration": float(s[_MAXRUN]),
            "hit_rate": math.nan if s[_ACTIVE] == 0 else float(s[_WINS] / s[_ACTIVE]),
            "profit_factor": float(pf),
            "turnover": float(s[_TURNOVER]),
            "annual_turnover": float(s[_TURNOVER] / years),
            "exposure": float(s[_EXPOSURE] / n),
            "time_in_market": float(s[_INMARKET] / n),
            "n_trades": float(s[_TRADES]),
            "costs": float(s[_COSTS]),
            "var_95": float(self.var_95[k]),
            "cvar_95": float(self.cvar_95[k]),
            "sharpe_per_bar": sr,
            "skew": skew,
            "kurtosis": kurt,
            "psr": stats.probabilistic_sharpe_ratio(sr, n, skew=skew, kurtosis=kurt),
            "dsr": stats.deflated_sharpe_ratio(
                sr, n, n_trials=n_trials, sr_variance=sr_var, skew=skew, kurtosis=kurt
            ),
            "min_trl": min_trl,
            "min_trl_years": min_trl / bpy,
        }


def random_timing(
    rng: np.random.Generator, n_passes: int, n_bars: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The draws of :func:`evaluation.backtest.exposure_matched_random` for ``K`` rows:
    ``shift[K]`` in ``1 .. n_bars - 1`` (0 for one bar) and ``flip[K]`` in ``{-1, +1}``,
    in that order from ``rng``."""
    k, n = int(n_passes), int(n_bars)
    shift = rng.integers(1, n, size=k) if n > 1 else np.zeros(k, dtype=np.int64)
    flip = rng.choice(np.array([-1.0, 1.0]), size=k)
    return shift, flip


class RandomTargets:
    """:func:`evaluation.backtest.exposure_matched_random`, built from a streamed policy walk.

    The random pass of row ``k`` holds ``|p_t| * b_k * d_{(t - u_k) mod N}``: the shift can
    look ahead, so the policy pass's whole direction path must exist before a random pass
    can be stepped. :meth:`add` takes the policy passes' positions chunk by chunk and keeps
    ``|p_t|`` as float32 (targets are rounded to float32 anyway, so the targets are the same
    floats as the one-shot function's) and the direction ``d_t`` as int8: 5 bytes per
    pass-bar, for one policy's passes at a time. :meth:`take` then gives the targets of
    any block of bars. The shifts and flips are drawn for all ``K`` passes at construction
    (:func:`random_timing`, the one-shot function's draws), so a pass group (``rows``) gets
    exactly the targets its rows have in the full run.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        n_passes: int,
        n_bars: int,
        rows: NDArray[np.int64] | None = None,
    ) -> None:
        self.n_passes, self.n_bars = int(n_passes), int(n_bars)
        shift, flip = random_timing(rng, self.n_passes, self.n_bars)
        rows = np.arange(self.n_passes) if rows is None else np.asarray(rows, dtype=np.int64)
        self.shift, self.flip = shift[rows], flip[rows]
        g = rows.size
        self.exposure = np.zeros((g, self.n_bars), dtype=np.float32)  # |p_t|
        self.direction = np.zeros((g, self.n_bars), dtype=np.int8)  # d_t (0: none yet)
        self._last = np.zeros(g, dtype=np.int8)  # last non-zero sign so far
        self._filled = 0
        self._done = False

    def add(self, positions: NDArray[np.float64]) -> None:
        """The next ``C`` bars of the policy passes' positions ``[G, C]``."""
        p = np.asarray(positions, dtype=np.float64)
        t0, t1 = self._filled, self._filled + p.shape[1]
        if t1 > self.n_bars:
            raise ValueError(f"RandomTargets got {t1} bars of a {self.n_bars}-bar walk.")
        self.exposure[:, t0:t1] = np.abs(p)
        sign = np.sign(p).astype(np.int8)
        # zeros take the previous non-zero sign: forward fill within the chunk, carrying
        # the last sign of the previous chunk in
        idx = np.where(sign != 0, np.arange(p.shape[1])[None, :], -1)
        idx = np.maximum.accumulate(idx, axis=1)
        filled = np.take_along_axis(sign, np.maximum(idx, 0), axis=1)
        self.direction[:, t0:t1] = np.where(idx < 0, self._last[:, None], filled)
        if p.shape[1]:
            self._last = self.direction[:, t1 - 1].copy()
        self._filled = t1

    def _finish(self) -> None:
        """Leading zeros take the first non-zero sign; an all-zero row is +1."""
        if self._filled != self.n_bars:
            raise ValueError(
                f"RandomTargets has {self._filled} of {self.n_bars} bars of the policy walk."
            )
        d = self.direction
        has = d != 0
        first = np.argmax(has, axis=1)
        first_sign = d[np.arange(d.shape[0]), first]
        first_sign = np.where(first_sign == 0, 1, first_sign).astype(np.int8)
        for row in np.flatnonzero(~has[:, 0]):  # only rows that start flat
            lead = int(first[row]) if has[row].any() else self.n_bars
            d[row, :lead] = first_sign[row]
        self._done = True

    def take(self, t0: int, t1: int) -> NDArray[np.float64]:
        """float64 ``[G, t1 - t0]``: the random passes' targets at bars ``t0 .. t1 - 1``."""
        if not self._done:
            self._finish()
        cols = (np.arange(int(t0), int(t1))[None, :] - self.shift[:, None]) % self.n_bars
        d = np.take_along_axis(self.direction, cols, axis=1).astype(np.float64)
        return self.exposure[:, t0:t1].astype(np.float64) * self.flip[:, None] * d
