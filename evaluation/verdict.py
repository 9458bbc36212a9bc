"""The verdict: has a stochastic policy learned something, or does it still act at random?

:func:`judge` works on plain numpy arrays, so it can judge pass results produced anywhere
(our backtester, another framework, a synthetic study). Shapes::

    policy_returns    [n_seeds, K,   n_bars]  net log return per bar of each stochastic pass
    random_returns    [n_seeds, K_r, n_bars]  same for exposure-matched random passes
    market_returns    [n_bars]                buy-and-hold net log return per bar
    policy_positions  [n_seeds, K,   n_bars]  position held during each bar of each pass

``n_seeds`` are independently trained policies (one per training seed), each run K >= 2
times over the *same* test bars with sampled actions. Four checks, each one-sided:

1. **consistency** (is the policy decisive?): per seed and per contiguous sub-window, the
   dispersion ratio ``rho = sd(policy pass totals) / sd(random pass totals)`` and a
   one-sided Brown-Forsythe test (``scipy.stats.levene(center="median")``, H1: the policy
   passes are *less* dispersed), converted to z-scores and combined over all seeds and
   windows with Stouffer's method. Passes if ``p < alpha`` and median ``rho <= rho_max``.
2. **edge vs buy-and-hold**: the per-bar excess log return of the pass-averaged policy over
   buy-and-hold, ``e_t = mean_{seed, pass} r_t - m_t``; one-sided p-value of ``mean(e) > 0``
   from a stationary block bootstrap of ``e``. Does not credit plain market exposure.
3. **edge vs random timing**: ``T = sum_t P_t m_t`` for the pass-averaged position path
   ``P`` against its circular shifts by whole periods of the market's calendar cycle
   (``period`` bars: 24 for H1, 5 for daily bars; 1 = every shift): same exposure profile,
   each position kept at its hour/weekday, timing destroyed; exact randomisation p-value
   when the market returns are exchangeable under such shifts (e.g. independent with a
   periodic volatility). Catches policies that only beat buy-and-hold by being short in a
   falling market.
4. **seed stability**: the share of seeds with *their own evidence*: decisive (``rho <=
   rho_max``) and both edges significant for that seed, the per-seed p-values
   (``max(excess_p, timing_p)``, an intersection-union test) judged with Hochberg's
   step-up procedure at ``edge_alpha``; the share must reach ``min_seed_share``.

A verdict also knows which bars it judged (:class:`Sample`): on anything but an untouched
test split (the validation split the ``best`` checkpoint was chosen on, or ``all`` bars,
training included) a would-be ``LEARNED`` is labelled ``IN-SAMPLE`` and every headline
says so.

Labels: ``LEARNED`` = consistency, both edges and stability pass on an untouched test
split (``IN-SAMPLE`` otherwise); ``INCONCLUSIVE`` =
an edge without consistency (or, without consistency, at least a random-timing edge), an
edge that does not hold on enough seeds, or seeds that disagree (some seed passes every
test on its own, its consistency at ``alpha / n_seeds`` and its edges kept by Hochberg's
procedure, while the pool is not LEARNED); ``CONSISTENT-BUT-NO-EDGE`` = decisive,
no edge; ``RANDOM`` = neither consistent nor any timing edge. Both edge tests are
needed: the random-timing null alone is fooled by rules selected on the test data, the
buy-and-hold test alone credits market exposure. A t-test on pass results
(:func:`naive_pass_ttest`) is *not* used: passes share one market path, so their spread
says nothing about the market's noise. Thresholds and their calibration:
``docs/evaluator.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from .bootstrap import BootstrapMethod, block_bootstrap_means, default_block_length

__all__ = [
    "CONSISTENT_BUT_NO_EDGE",
    "INCONCLUSIVE",
    "IN_SAMPLE",
    "LABELS",
    "LEARNED",
    "RANDOM",
    "Check",
    "Sample",
    "SeedResult",
    "Verdict",
    "VerdictConfig",
    "VerdictInputs",
    "brown_forsythe_one_sided",
    "hochberg_reject",
    "judge",
    "judge_inputs",
    "naive_pass_ttest",
    "relabel",
    "window_totals",
]

LEARNED = "LEARNED"
CONSISTENT_BUT_NO_EDGE = "CONSISTENT-BUT-NO-EDGE"
RANDOM = "RANDOM"
INCONCLUSIVE = "INCONCLUSIVE"
IN_SAMPLE = "IN-SAMPLE"
"""What a would-be LEARNED becomes on bars that are not an untouched test split."""
LABELS = (LEARNED, CONSISTENT_BUT_NO_EDGE, RANDOM, INCONCLUSIVE, IN_SAMPLE)

MIN_BARS_PER_WINDOW = 10
"""Each dispersion sub-window must hold at least this many bars."""

_P_FLOOR = 1e-15  # one-sided p-values are clipped to [floor, 1 - floor] before z-scoring


@dataclass(frozen=True)
class VerdictConfig:
    """Thresholds of the verdict; defaults are justified in ``docs/evaluator.md``."""

    alpha: float = 0.05  # level of the one-sided dispersion (consistency) test
    edge_alpha: float = 0.02  # level of each edge test (vs buy-and-hold, vs random timing)
    rho_max: float = 0.5  # largest median dispersion ratio that counts as decisive
    n_windows: int = 4  # contiguous sub-windows for the dispersion test (Stouffer-combined)
    block_length: float | None = None  # mean bootstrap block, bars; None = n_bars ** (1/3)
    bootstrap: BootstrapMethod = "stationary"  # "stationary" or "circular" block bootstrap
    n_boot: int = 2000  # bootstrap resamples for the edge-vs-buy-and-hold test
    min_seed_share: float = 0.75  # share of seeds that must be decisive with a positive edge
    seed: int = 0  # seed of the bootstrap generator: same inputs and seed, same verdict

    def __post_init__(self) -> None:
        for name in ("alpha", "edge_alpha"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ValueError(f"VerdictConfig.{name} must be in (0, 0.5); got {v}.")
        if not self.rho_max > 0.0:
            raise ValueError(f"VerdictConfig.rho_max must be > 0; got {self.rho_max}.")
        if int(self.n_windows) != self.n_windows or self.n_windows < 1:
            raise ValueError(f"VerdictConfig.n_windows must be an int >= 1; got {self.n_windows}.")
        if self.block_length is not None and not self.block_length >= 1.0:
            raise ValueError(
                f"VerdictConfig.block_length must be None or >= 1 bar; got {self.block_length}."
            )
        if self.bootstrap not in ("stationary", "circular"):
            raise ValueError(
                "VerdictConfig.bootstrap must be 'stationary' or 'circular'; "
                f"got {self.bootstrap!r}."
            )
        if int(self.n_boot) != self.n_boot or self.n_boot < 100:
            raise ValueError(f"VerdictConfig.n_boot must be an int >= 100; got {self.n_boot}.")
        if not 0.0 < self.min_seed_share <= 1.0:
            raise ValueError(
                f"VerdictConfig.min_seed_share must be in (0, 1]; got {self.min_seed_share}."
            )


SPLITS_OUT_OF_SAMPLE = ("test",)
"""Splits a verdict may call out-of-sample (when no checkpoint was chosen on them)."""


@dataclass(frozen=True)
class Sample:
    """Which bars a verdict judged and how the judged policies were chosen.

    ``best`` checkpoints are chosen on the validation split, so a backtest on ``validation``
    with ``best`` judges the very bars the choice was made on; ``all`` holds the training
    bars. Only a ``test`` split that nothing was chosen on supports an out-of-sample claim.
    """

    split: str = "test"  # bars judged: test | validation | all (or another name)
    checkpoint: str | None = None  # which checkpoint: best | final | None (not said)
    selected_on: str | None = None  # split the checkpoint/config was chosen on, None if none
    n_trials: int = 1  # configs x checkpoints x seeds looked at (for the Deflated Sharpe)

    def __post_init__(self) -> None:
        if int(self.n_trials) != self.n_trials or self.n_trials < 1:
            raise ValueError(f"Sample.n_trials must be an int >= 1; got {self.n_trials}.")

    @property
    def in_sample(self) -> bool:
        """True unless the bars are an untouched test split."""
        return self.split not in SPLITS_OUT_OF_SAMPLE or self.selected_on in (
            self.split,
            "all",
        )

    def describe(self) -> str:
        """Plain English: which bars, which checkpoint, and why it is (not) out of sample."""
        ck = f", {self.checkpoint} checkpoint" if self.checkpoint else ""
        chosen = f" chosen on the {self.selected_on} split" if self.selected_on else ""
        if not self.in_sample:
            return f"{self.split} split{ck}{chosen}: untouched by training and selection"
        if self.split == "all":
            why = "these bars include the training bars"
        elif self.selected_on in (self.split, "all"):
            why = "the checkpoint was chosen on these bars"
        else:
            why = f"the {self.split} split is not an untouched test split"
        return f"{self.split} split{ck}{chosen}: {why}"


@dataclass(frozen=True)
class Check:
    """One of the four checks behind a verdict."""

    name: str  # consistency | edge_vs_buy_and_hold | edge_vs_random_timing | seed_stability
    statistic: float  # the headline statistic (see `description`)
    p_value: float | None  # one-sided p-value; None for seed stability
    threshold: float  # the level (p-value) or share the check is judged against
    passed: bool  # True when the check supports "learned"
    description: str  # plain-English line: what was measured and the result


@dataclass(frozen=True)
class SeedResult:
    """The checks for one training seed on its own (for the per-seed table)."""

    seed_index: int  # position along the n_seeds axis of the inputs
    rho: float  # median dispersion ratio over the sub-windows
    rho_windows: tuple[float, ...]  # [n_windows] dispersion ratio per sub-window
    consistency_z: float  # Stouffer z of the one-sided Brown-Forsythe tests over windows
    consistency_p: float  # its one-sided p-value
    mean_pass_return: float  # mean total log return of the K passes
    excess_total: float  # total log return of the pass average minus buy-and-hold's
    excess_p: float  # block-bootstrap p-value of a positive mean excess
    timing_edge: float  # sum_t P_t m_t minus its mean over circular shifts
    timing_p: float  # circular-shift p-value
    supports: bool  # rho <= rho_max and both edges kept by Hochberg's procedure


@dataclass(frozen=True)
class Verdict:
    """The verdict, every statistic behind it, and a plain-English explanation."""

    label: str  # LEARNED | CONSISTENT-BUT-NO-EDGE | RANDOM | INCONCLUSIVE
    explanation: str  # plain English: what the label means here and which checks failed
    checks: dict[str, Check]  # the four checks by name
    rho: float  # median dispersion ratio over all seeds and windows
    consistency_z: float  # Stouffer z over all seeds and windows
    consistency_p: float  # its one-sided p-value
    excess_total: float  # total excess log return of the pooled pass average over buy-and-hold
    excess_p: float  # block-bootstrap p-value of a positive mean excess
    timing_stat: float  # sum_t P_t m_t of the pooled mean position path
    timing_null_mean: float  # mean of the statistic over all circular shifts
    timing_null_sd: float  # its standard deviation over the shifts
    timing_p: float  # share of shifts (including 0) scoring at least the observed value
    timing_period: int  # shifts are whole multiples of this many bars (the calendar cycle)
    n_timing_shifts: int  # shifts in the random-timing null (its p-value >= 1 / this)
    seed_share: float  # share of seeds with their own evidence (decisive, both edges)
    seeds: tuple[SeedResult, ...]  # per-seed details
    n_seeds: int  # training seeds judged
    n_passes: int  # stochastic passes per seed, K
    n_random_passes: int  # exposure-matched random passes per seed, K_r
    n_bars: int  # bars in the test period
    block_length: float  # mean bootstrap block length actually used, bars
    statistical_label: str  # the label the statistics give, before the in-sample guard
    in_sample: bool  # True unless the bars are an untouched test split
    sample: Sample = field(default_factory=Sample)  # which bars, which checkpoint, trials
    config: VerdictConfig = field(default_factory=VerdictConfig)  # thresholds used

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (non-finite floats become ``None``)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------- inputs


def _as_array(x: ArrayLike, name: str, ndim: int, shape_doc: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        hint = " (for a single training seed use x[None])" if ndim == 3 and a.ndim == 2 else ""
        raise ValueError(f"{name} must have shape {shape_doc}; got shape {a.shape}{hint}.")
    if not np.all(np.isfinite(a)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{name} has a non-finite value at index {idx}.")
    return a


def _validate(
    policy_returns: ArrayLike,
    random_returns: ArrayLike,
    market_returns: ArrayLike,
    policy_positions: ArrayLike,
    config: VerdictConfig,
) -> tuple[NDArray[np.float64], ...]:
    pr = _as_array(policy_returns, "policy_returns", 3, "[n_seeds, K, n_bars]")
    rr = _as_array(random_returns, "random_returns", 3, "[n_seeds, K_r, n_bars]")
    m = _as_array(market_returns, "market_returns", 1, "[n_bars]")
    pos = _as_array(policy_positions, "policy_positions", 3, "[n_seeds, K, n_bars]")
    n_seeds, k, n_bars = pr.shape
    if n_seeds < 1:
        raise ValueError("policy_returns [n_seeds, K, n_bars] needs n_seeds >= 1.")
    if k < 2:
        raise ValueError(
            f"policy_returns [n_seeds, K, n_bars] needs K >= 2 passes per seed to measure "
            f"dispersion; got K = {k}."
        )
    if rr.shape[0] != n_seeds or rr.shape[2] != n_bars:
        raise ValueError(
            f"random_returns must have shape [n_seeds, K_r, n_bars] = [{n_seeds}, K_r, {n_bars}]; "
            f"got {rr.shape}."
        )
    if rr.shape[1] < 2:
        raise ValueError(
            f"random_returns [n_seeds, K_r, n_bars] needs K_r >= 2 random passes; "
            f"got K_r = {rr.shape[1]}."
        )
    if m.shape != (n_bars,):
        raise ValueError(f"market_returns must have shape [n_bars] = [{n_bars}]; got {m.shape}.")
    if pos.shape != pr.shape:
        raise ValueError(
            f"policy_positions must have the shape of policy_returns [n_seeds, K, n_bars] = "
            f"{list(pr.shape)}; got {list(pos.shape)}."
        )
    min_bars = MIN_BARS_PER_WINDOW * config.n_windows
    if n_bars < min_bars:
        raise ValueError(
            f"too few bars: n_bars = {n_bars}, but n_windows = {config.n_windows} needs at least "
            f"{min_bars} ({MIN_BARS_PER_WINDOW} per window). Use a longer test period or fewer "
            f"windows."
        )
    return pr, rr, m, pos


# --------------------------------------------------------------------------- checks


def brown_forsythe_one_sided(
    x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One-sided Brown-Forsythe test of H1: spread(x) < spread(y), vectorised.

    Brown & Forsythe (1974), "Robust tests for the equality of variances", JASA 69(346):
    Levene's test on absolute deviations from the group medians, i.e.
    ``scipy.stats.levene(x, y, center="median")``. With two groups Levene's ``W`` equals
    ``t^2`` for the pooled two-sample t statistic on the absolute deviations, so the signed
    ``t = (mean(d_y) - mean(d_x)) / (s_p sqrt(1/n_x + 1/n_y))`` (positive when x is less
    dispersed) gives the one-sided p-value ``P(T_{n_x + n_y - 2} >= t)``.

    Args:
        x: samples along axis -2, e.g. pass totals ``[n_seeds, K, n_windows]``.
        y: comparison samples along axis -2, e.g. ``[n_seeds, K_r, n_windows]``.

    Returns:
        ``(t, p)``, each with the shape of ``x`` without axis -2 (e.g. ``[n_seeds,
        n_windows]``). ``t`` is +-inf when the deviations are constant within each group and
        0 (``p = 0.5``) when neither group has any spread.
    """
    dx = np.abs(x - np.median(x, axis=-2, keepdims=True))
    dy = np.abs(y - np.median(y, axis=-2, keepdims=True))
    nx, ny = x.shape[-2], y.shape[-2]
    mx, my = dx.mean(axis=-2), dy.mean(axis=-2)
    ssw = ((dx - np.expand_dims(mx, -2)) ** 2).sum(axis=-2) + (
        (dy - np.expand_dims(my, -2)) ** 2
    ).sum(axis=-2)
    df = nx + ny - 2
    diff = my - mx
    se = np.sqrt(ssw / df * (1.0 / nx + 1.0 / ny))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0.0, diff / se, np.sign(diff) * np.inf)
    t = np.where(np.isnan(t), 0.0, t)
    return t, sps.t.sf(t, df)


def window_totals(returns: NDArray[np.float64], n_windows: int) -> NDArray[np.float64]:
    """Pass totals per contiguous dispersion window: ``[..., n_bars] -> [..., n_windows]``."""
    n_bars = returns.shape[-1]
    starts = np.array([w[0] for w in np.array_split(np.arange(n_bars), n_windows)])
    return np.add.reduceat(returns, starts, axis=-1)


def _dispersion(
    x_tot: NDArray[np.float64], y_tot: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Dispersion ratio and BF z-score per seed and window, both ``[n_seeds, n_windows]``.

    ``x_tot [S, K, W]`` and ``y_tot [S, K_r, W]`` are the policy's and the random passes'
    totals per window (:func:`window_totals`). Windows where the K policy pass totals are
    identical (a deterministic policy, e.g. always flat) get ``rho = 0`` and the largest z:
    no policy is more decisive. Windows where only the random passes are identical get
    ``rho = inf`` and the smallest z.
    """
    sd_x = np.std(x_tot, axis=1, ddof=1)  # [S, W]
    sd_y = np.std(y_tot, axis=1, ddof=1)
    scale = np.maximum(1.0, np.maximum(np.abs(x_tot).max(axis=1), np.abs(y_tot).max(axis=1)))
    flat_x = sd_x <= 1e-12 * scale
    flat_y = sd_y <= 1e-12 * scale
    _, p1 = brown_forsythe_one_sided(x_tot, y_tot)
    p1 = np.where(flat_x, 0.0, np.where(flat_y, 1.0, p1))
    z = sps.norm.isf(np.clip(p1, _P_FLOOR, 1.0 - _P_FLOOR))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(flat_x, 0.0, np.where(flat_y, np.inf, sd_x / sd_y))
    return rho, z


def _circular_timing(
    positions: NDArray[np.float64], market: NDArray[np.float64], period: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Random-timing null by circular shifts of whole periods, for each row of ``positions``.

    ``T(s) = sum_t P_{(t - s) mod n} m_t`` for the shifts ``s = 0, period, 2 period, ...``
    (one FFT per row). With ``period = 1`` every shift is used; with the market's calendar
    cycle (24 bars for H1, 5 for daily bars) every shifted position stays at its own hour
    or weekday. The first ``n_bars mod period`` bars are left out so that the series holds
    whole cycles and the wrap-around keeps the phase too. Under market returns that are
    exchangeable under these shifts and independent of the timing (e.g. independent with a
    periodic volatility profile), the rank of ``T(0)`` among the ``T(s)`` is uniform, so
    ``p = #{s : T(s) >= T(0)} / n_shifts`` is an exact one-sided p-value (ties count against
    the policy), never below ``1 / n_shifts``. Shifts that are not whole cycles move
    positions sized for a volatile hour onto quiet hours: their ``T(s)`` are less dispersed
    than ``T(0)`` and the test rejects too often (``docs/evaluator.md``). Shifting keeps the
    position path's exposure profile and autocorrelation and destroys its alignment with
    the returns: the one-dimensional case of the toroidal-shift test of Lotwick &
    Silverman (1982), "Methods for analysing spatial processes of several types of points",
    JRSS B 44(3). The whole-cycle rotations form a group that leaves a cyclostationary
    series' distribution invariant, which is what makes the randomisation test exact (the
    randomisation hypothesis, Lehmann & Romano 2005, "Testing Statistical Hypotheses", 3rd
    ed., Sec. 15.2); all single-bar rotations do not.

    Args:
        positions: ``[R, n_bars]`` position paths.
        market: ``[n_bars]`` market log returns.
        period: shift step in bars, ``1 <= period <= n_bars // 2``.

    Returns:
        ``(T0, null_mean, null_sd, p)``, each ``[R]``, over the kept bars.
    """
    n_all = market.size
    if int(period) != period or not 1 <= period <= n_all // 2:
        raise ValueError(
            f"period must be an int in [1, n_bars // 2 = {n_all // 2}] bars; got {period}."
        )
    period = int(period)
    skip = n_all % period  # keep whole cycles: the wrap-around then keeps the phase too
    positions, market = positions[:, skip:], market[skip:]
    n = market.size
    t0 = positions @ market  # [R], exact
    spectrum = np.fft.rfft(market)[None] * np.conj(np.fft.rfft(positions, axis=1))
    shifted = np.fft.irfft(spectrum, n=n)[:, ::period]  # [R, n / period] whole-cycle shifts
    shifted[:, 0] = t0  # shift 0 exactly
    tol = 1e-9 * (np.abs(positions) @ np.abs(market)) + 1e-300
    p = np.mean(shifted >= (t0 - tol)[:, None], axis=1)
    return t0, shifted.mean(axis=1), shifted.std(axis=1), p


def hochberg_reject(p_values: ArrayLike, alpha: float) -> NDArray[np.bool_]:
    """Hochberg's step-up procedure: which hypotheses to reject at family-wise level ``alpha``.

    Sort the ``m`` p-values ``p_(1) <= ... <= p_(m)``; find the largest ``i`` with
    ``p_(i) <= alpha / (m - i + 1)`` and reject the hypotheses of ``p_(1) .. p_(i)``.
    Hochberg (1988), "A sharper Bonferroni procedure for multiple tests of significance",
    Biometrika 75(4). It controls the family-wise error under independence and under
    positive regression dependence (Sarkar 1998, Ann. Statist. 26(2)), which per-seed tests
    on one shared market path have. Unlike Bonferroni it keeps power when all hypotheses
    are false together: equal p-values below ``alpha`` are all rejected; a lone small
    p-value needs ``p <= alpha / m``.

    Args:
        p_values: ``[m]`` p-values.
        alpha: family-wise level.

    Returns:
        ``[m]`` bool, True where the hypothesis is rejected.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    ok = p[order] <= alpha / (m - np.arange(m))  # i = 1..m -> alpha / (m - i + 1)
    reject = np.zeros(m, dtype=bool)
    if ok.any():
        reject[order[: int(np.flatnonzero(ok).max()) + 1]] = True
    return reject


def _bootstrap_p(means: NDArray[np.float64], observed: NDArray[np.float64]) -> NDArray[np.float64]:
    """One-sided p-values of H1 mean > 0 from bootstrap means ``[R, B]`` (centred pivot).

    ``p = (1 + #{b : mean*_b - mean >= mean}) / (B + 1)``: the bootstrap distribution of the
    estimation error, shifted to the null value 0 (Hall & Wilson 1991, "Two guidelines for
    bootstrap hypothesis testing", Biometrics 47(2)).
    """
    exceed = (means - observed[:, None]) >= observed[:, None] - 1e-15 * np.abs(observed[:, None])
    return (1.0 + exceed.sum(axis=1)) / (means.shape[1] + 1.0)


# --------------------------------------------------------------------------- judge


def judge(
    policy_returns: ArrayLike,
    random_returns: ArrayLike,
    market_returns: ArrayLike,
    policy_positions: ArrayLike,
    config: VerdictConfig | None = None,
    *,
    period: int = 1,
    sample: Sample | None = None,
) -> Verdict:
    """Judge whether a stochastic policy has learned, from its repeated test passes.

    Args:
        policy_returns: ``[n_seeds, K, n_bars]`` net log return per bar of each of the K
            stochastic passes of each training seed's policy over the same test bars
            (K >= 2).
        random_returns: ``[n_seeds, K_r, n_bars]`` net log returns of K_r >= 2
            exposure-matched random passes per seed (random sign/timing, the policy's
            exposure profile, same costs).
        market_returns: ``[n_bars]`` buy-and-hold net log return per bar.
        policy_positions: ``[n_seeds, K, n_bars]`` position held during each bar of each
            policy pass (fraction of equity, short < 0).
        config: thresholds; ``VerdictConfig()`` by default.
        period: the market's calendar cycle in bars (24 for H1 bars, 5 for daily bars, 1
            for none); the random-timing null shifts by whole cycles only. See
            :func:`evaluation.stats.seasonal_period`.
        sample: which bars were judged and how the policy was chosen; ``None`` assumes an
            untouched test split. On any other sample a would-be LEARNED is ``IN-SAMPLE``.

    Returns:
        A :class:`Verdict`; deterministic for given inputs and ``config.seed``.

    Raises:
        ValueError: wrong number of dimensions, mismatched shapes (the message names the
            argument and the expected shape), K or K_r < 2, non-finite values, fewer than
            ``10 * n_windows`` bars, or a ``period`` outside ``[1, n_bars // 2]``.
    """
    cfg = config if config is not None else VerdictConfig()
    smp = sample if sample is not None else Sample()
    pr, rr, m, pos = _validate(
        policy_returns, random_returns, market_returns, policy_positions, cfg
    )
    return judge_inputs(
        VerdictInputs.from_arrays(pr, rr, m, pos, cfg.n_windows), cfg, period=period, sample=smp
    )


@dataclass(frozen=True)
class VerdictInputs:
    """All :func:`judge` uses of the passes: window totals and pass-averaged paths.

    O(n_seeds * K * n_windows + n_seeds * n_bars) numbers, which a streaming backtest
    accumulates without keeping ``[n_seeds, K, n_bars]`` arrays
    (:mod:`evaluation.streaming`).
    """

    policy_window_totals: NDArray[np.float64]  # [n_seeds, K, n_windows] pass totals per window
    random_window_totals: NDArray[np.float64]  # [n_seeds, K_r, n_windows] same, random passes
    policy_mean_returns: NDArray[np.float64]  # [n_seeds, n_bars] pass-averaged log return
    policy_mean_positions: NDArray[np.float64]  # [n_seeds, n_bars] pass-averaged position
    policy_totals: NDArray[np.float64]  # [n_seeds, K] total log return of each pass
    market_returns: NDArray[np.float64]  # [n_bars] buy-and-hold net log return per bar

    @classmethod
    def from_arrays(
        cls,
        policy_returns: NDArray[np.float64],
        random_returns: NDArray[np.float64],
        market_returns: NDArray[np.float64],
        policy_positions: NDArray[np.float64],
        n_windows: int,
    ) -> VerdictInputs:
        """The inputs from :func:`judge`'s full arrays (shapes as there)."""
        return cls(
            window_totals(policy_returns, n_windows),
            window_totals(random_returns, n_windows),
            policy_returns.mean(axis=1),
            policy_positions.mean(axis=1),
            policy_returns.sum(axis=2),
            market_returns,
        )


def judge_inputs(
    inputs: VerdictInputs,
    config: VerdictConfig | None = None,
    *,
    period: int = 1,
    sample: Sample | None = None,
) -> Verdict:
    """:func:`judge` from its reduced inputs (what a streaming backtest accumulates).

    ``period`` and ``sample`` as in :func:`judge`.

    Raises:
        ValueError: mismatched shapes, K or K_r < 2, non-finite values, windows that do not
            match ``config.n_windows``, fewer than ``10 * n_windows`` bars, or a ``period``
            outside ``[1, n_bars // 2]``.
    """
    cfg = config if config is not None else VerdictConfig()
    smp = sample if sample is not None else Sample()
    x_tot = _as_array(inputs.policy_window_totals, "policy_window_totals", 3, "[S, K, W]")
    y_tot = _as_array(inputs.random_window_totals, "random_window_totals", 3, "[S, K_r, W]")
    mean_r = _as_array(inputs.policy_mean_returns, "policy_mean_returns", 2, "[S, n_bars]")
    mean_p = _as_array(inputs.policy_mean_positions, "policy_mean_positions", 2, "[S, n_bars]")
    totals = _as_array(inputs.policy_totals, "policy_totals", 2, "[S, K]")
    m = _as_array(inputs.market_returns, "market_returns", 1, "[n_bars]")
    n_seeds, k, n_windows = x_tot.shape
    n_bars = m.size
    if n_windows != cfg.n_windows or y_tot.shape[2] != n_windows:
        raise ValueError(
            f"window totals have {n_windows} and {y_tot.shape[2]} windows; the config asks for "
            f"n_windows = {cfg.n_windows}."
        )
    if k < 2 or y_tot.shape[1] < 2:
        raise ValueError(f"need K >= 2 and K_r >= 2 passes; got {k} and {y_tot.shape[1]}.")
    if (
        y_tot.shape[0] != n_seeds
        or mean_r.shape != (n_seeds, n_bars)
        or mean_p.shape != (n_seeds, n_bars)
        or totals.shape != (n_seeds, k)
    ):
        raise ValueError(
            f"verdict inputs disagree on n_seeds = {n_seeds}, K = {k}, n_bars = {n_bars}."
        )
    if n_bars < MIN_BARS_PER_WINDOW * cfg.n_windows:
        raise ValueError(
            f"too few bars: n_bars = {n_bars}, but n_windows = {cfg.n_windows} needs at least "
            f"{MIN_BARS_PER_WINDOW * cfg.n_windows}."
        )
    k_r = y_tot.shape[1]
    rng = np.random.default_rng(cfg.seed)

    # 1. consistency ------------------------------------------------------------------
    rho_sw, z_sw = _dispersion(x_tot, y_tot)  # [S, W]
    seed_z = z_sw.sum(axis=1) / math.sqrt(cfg.n_windows)
    seed_cons_p = sps.norm.sf(seed_z)
    pooled_z = float(z_sw.sum() / math.sqrt(z_sw.size))
    pooled_cons_p = float(sps.norm.sf(pooled_z))
    seed_rho = np.median(rho_sw, axis=1)
    rho = float(np.median(rho_sw))

    # 2. edge vs buy-and-hold: pooled row first, then one row per seed -----------------
    seed_excess = mean_r - m  # [S, n_bars] pass-averaged excess per seed
    block = default_block_length(n_bars) if cfg.block_length is None else float(cfg.block_length)
    seed_boot = block_bootstrap_means(
        seed_excess, n_boot=cfg.n_boot, block_length=block, method=cfg.bootstrap, rng=rng
    )  # [S, B]
    # the pooled series is the mean of the seed series; with shared blocks so is its resample
    boot = np.concatenate([seed_boot.mean(axis=0, keepdims=True), seed_boot])  # [1+S, B]
    excess_mean = np.concatenate([seed_excess.mean(axis=(0, 1))[None], seed_excess.mean(axis=1)])
    excess_p = _bootstrap_p(boot, excess_mean)
    excess_total = excess_mean * n_bars

    # 3. edge vs random timing ---------------------------------------------------------
    seed_mean_pos = mean_p  # [S, n_bars]
    paths = np.concatenate([seed_mean_pos.mean(axis=0, keepdims=True), seed_mean_pos])
    t0, null_mean, null_sd, timing_p = _circular_timing(paths, m, period)
    timing_edge = t0 - null_mean
    n_shifts = (n_bars - n_bars % int(period)) // int(period)

    d = _decide(
        rho=rho,
        consistency_p=pooled_cons_p,
        excess_p=float(excess_p[0]),
        timing_p=float(timing_p[0]),
        seed_rho=seed_rho,
        seed_consistency_p=seed_cons_p,
        seed_excess=excess_mean[1:],
        seed_excess_p=excess_p[1:],
        seed_timing_edge=timing_edge[1:],
        seed_timing_p=timing_p[1:],
        config=cfg,
        in_sample=smp.in_sample,
    )
    seeds = tuple(
        SeedResult(
            seed_index=s,
            rho=float(seed_rho[s]),
            rho_windows=tuple(float(v) for v in rho_sw[s]),
            consistency_z=float(seed_z[s]),
            consistency_p=float(seed_cons_p[s]),
            mean_pass_return=float(totals[s].mean()),
            excess_total=float(excess_total[1 + s]),
            excess_p=float(excess_p[1 + s]),
            timing_edge=float(timing_edge[1 + s]),
            timing_p=float(timing_p[1 + s]),
            supports=bool(d.supports[s]),
        )
        for s in range(n_seeds)
    )
    checks = {
        "consistency": Check(
            name="consistency",
            statistic=rho,
            p_value=pooled_cons_p,
            threshold=cfg.alpha,
            passed=d.consistent,
            description=(
                f"dispersion ratio rho = {rho:.3g} (policy vs exposure-matched random passes, "
                f"median of {n_seeds}x{cfg.n_windows} seed-windows; decisive if <= "
                f"{cfg.rho_max:g}); one-sided Brown-Forsythe, Stouffer z = {pooled_z:.2f}, "
                f"p = {pooled_cons_p:.2g} (needs < {cfg.alpha:g})"
            ),
        ),
        "edge_vs_buy_and_hold": Check(
            name="edge_vs_buy_and_hold",
            statistic=float(excess_total[0]),
            p_value=float(excess_p[0]),
            threshold=cfg.edge_alpha,
            passed=d.edge_bh,
            description=(
                f"pass-averaged excess log return over buy-and-hold = {excess_total[0]:+.4g} in "
                f"total; {cfg.bootstrap} block bootstrap (mean block {block:.3g} bars, "
                f"{cfg.n_boot} resamples), p = {excess_p[0]:.2g} (needs < {cfg.edge_alpha:g})"
            ),
        ),
        "edge_vs_random_timing": Check(
            name="edge_vs_random_timing",
            statistic=float(t0[0]),
            p_value=float(timing_p[0]),
            threshold=cfg.edge_alpha,
            passed=d.edge_timing,
            description=(
                f"timing statistic sum(P_t m_t) = {t0[0]:+.4g} vs {null_mean[0]:+.4g} "
                f"+/- {null_sd[0]:.3g} over {n_shifts} circular shifts of the mean position "
                f"path by whole cycles of {int(period)} bar(s), p = {timing_p[0]:.2g} "
                f"(needs < {cfg.edge_alpha:g})"
            ),
        ),
        "seed_stability": Check(
            name="seed_stability",
            statistic=d.seed_share,
            p_value=None,
            threshold=cfg.min_seed_share,
            passed=d.stable,
            description=(
                f"{int(d.supports.sum())}/{n_seeds} seeds are decisive with both edges "
                f"significant on their own (Hochberg at {cfg.edge_alpha:g} over {n_seeds} "
                f"seeds; needs >= {cfg.min_seed_share:.0%}); {d.n_seed_learned}/{n_seeds} also "
                f"pass consistency at {cfg.alpha:g}/{n_seeds}"
            ),
        ),
    }
    explanation = _explain(d.label, d.statistical_label, checks, d.n_seed_learned, n_seeds, k, smp)
    return Verdict(
        label=d.label,
        explanation=explanation,
        checks=checks,
        rho=rho,
        consistency_z=pooled_z,
        consistency_p=pooled_cons_p,
        excess_total=float(excess_total[0]),
        excess_p=float(excess_p[0]),
        timing_stat=float(t0[0]),
        timing_null_mean=float(null_mean[0]),
        timing_null_sd=float(null_sd[0]),
        timing_p=float(timing_p[0]),
        timing_period=int(period),
        n_timing_shifts=n_shifts,
        seed_share=d.seed_share,
        seeds=seeds,
        n_seeds=n_seeds,
        n_passes=k,
        n_random_passes=k_r,
        n_bars=n_bars,
        block_length=block,
        statistical_label=d.statistical_label,
        in_sample=smp.in_sample,
        sample=smp,
        config=cfg,
    )


@dataclass(frozen=True)
class _Decision:
    consistent: bool
    edge_bh: bool
    edge_timing: bool
    stable: bool
    supports: NDArray[np.bool_]
    seed_share: float
    n_seed_learned: int
    statistical_label: str
    label: str


def _decide(
    *,
    rho: float,
    consistency_p: float,
    excess_p: float,
    timing_p: float,
    seed_rho: NDArray[np.float64],
    seed_consistency_p: NDArray[np.float64],
    seed_excess: NDArray[np.float64],
    seed_excess_p: NDArray[np.float64],
    seed_timing_edge: NDArray[np.float64],
    seed_timing_p: NDArray[np.float64],
    config: VerdictConfig,
    in_sample: bool = False,
) -> _Decision:
    """The decision rule: statistics in, label out. The one place thresholds are applied."""
    cfg = config
    consistent = consistency_p < cfg.alpha and rho <= cfg.rho_max
    edge_bh = excess_p < cfg.edge_alpha
    edge_timing = timing_p < cfg.edge_alpha
    edge = edge_bh and edge_timing
    # a seed counts only with its own evidence: both of its edges significant (the larger
    # p-value: intersection-union), the n_seeds tests judged with Hochberg's step-up rule
    seed_edge_p = np.maximum(seed_excess_p, seed_timing_p)
    own_edge = (
        hochberg_reject(seed_edge_p, cfg.edge_alpha)
        & (seed_excess > 0.0)
        & (seed_timing_edge > 0.0)
    )
    supports = (seed_rho <= cfg.rho_max) & own_edge
    seed_share = float(np.mean(supports))
    stable = seed_share >= cfg.min_seed_share
    # "some seed passes every test on its own": its consistency at a Bonferroni level too
    n_seeds = seed_rho.size
    seed_learned = supports & (seed_consistency_p < cfg.alpha / n_seeds)
    n_seed_learned = int(seed_learned.sum())
    if consistent and edge and stable:
        label = LEARNED
    elif edge or n_seed_learned > 0:
        label = INCONCLUSIVE
    elif consistent:
        label = CONSISTENT_BUT_NO_EDGE
    elif edge_timing:  # noisy passes whose average still times the market: partly learned?
        label = INCONCLUSIVE
    else:
        label = RANDOM
    statistical_label = label
    if in_sample and label == LEARNED:
        label = IN_SAMPLE
    return _Decision(
        consistent=bool(consistent),
        edge_bh=bool(edge_bh),
        edge_timing=bool(edge_timing),
        stable=bool(stable),
        supports=supports,
        seed_share=seed_share,
        n_seed_learned=n_seed_learned,
        statistical_label=statistical_label,
        label=label,
    )


def relabel(verdict: Verdict, config: VerdictConfig) -> str:
    """The label ``verdict``'s statistics would get under other thresholds.

    Re-applies the decision rule of :func:`judge` to the stored statistics, without
    recomputing them: changing ``alpha``, ``edge_alpha``, ``rho_max`` or ``min_seed_share``
    is exact; ``n_windows``, ``block_length``, ``bootstrap``, ``n_boot`` and ``seed`` change
    the statistics themselves and are ignored here (call :func:`judge` again). Used by the
    calibration to show how the error rates move with each threshold.

    Args:
        verdict: a verdict from :func:`judge`.
        config: the thresholds to apply.

    Returns:
        One of :data:`LABELS`.
    """
    seeds = verdict.seeds
    return _decide(
        rho=verdict.rho,
        consistency_p=verdict.consistency_p,
        excess_p=verdict.excess_p,
        timing_p=verdict.timing_p,
        seed_rho=np.array([s.rho for s in seeds]),
        seed_consistency_p=np.array([s.consistency_p for s in seeds]),
        seed_excess=np.array([s.excess_total for s in seeds]),
        seed_excess_p=np.array([s.excess_p for s in seeds]),
        seed_timing_edge=np.array([s.timing_edge for s in seeds]),
        seed_timing_p=np.array([s.timing_p for s in seeds]),
        config=config,
        in_sample=verdict.in_sample,
    ).label


_HEADLINES = {
    LEARNED: (
        "LEARNED: the policy is decisive (its {k} passes end close together, unlike "
        "exposure-matched random passes), its decisions beat both buy-and-hold and random "
        "timing, and this holds on most training seeds."
    ),
    CONSISTENT_BUT_NO_EDGE: (
        "CONSISTENT-BUT-NO-EDGE: the policy is decisive, but its decisions do not beat {failed}."
    ),
    RANDOM: (
        "RANDOM: the {k} passes are about as dispersed as exposure-matched random passes and "
        "there is no edge: the policy still acts like a coin."
    ),
    INCONCLUSIVE: "INCONCLUSIVE: {why}.",
    IN_SAMPLE: (
        "IN-SAMPLE: the statistics would say LEARNED, but the bars judged are the {sample}; "
        "that is no evidence of out-of-sample skill: judge an untouched test split."
    ),
}


def _explain(
    label: str,
    statistical_label: str,
    checks: dict[str, Check],
    n_seed_learned: int,
    n_seeds: int,
    k: int,
    sample: Sample,
) -> str:
    c = checks
    failed_edges = [
        name
        for key, name in (
            ("edge_vs_buy_and_hold", "buy-and-hold"),
            ("edge_vs_random_timing", "random timing"),
        )
        if not c[key].passed
    ]
    why = ""
    if statistical_label == INCONCLUSIVE:
        reasons = []
        if n_seed_learned > 0:
            reasons.append(
                f"the seeds disagree: {n_seed_learned} of {n_seeds} pass every test on their "
                f"own but the pool does not"
            )
        bh, timing = c["edge_vs_buy_and_hold"].passed, c["edge_vs_random_timing"].passed
        if bh and timing:
            if not c["consistency"].passed:
                reasons.append(
                    "there is an edge but the passes are not consistent (sigma is still large "
                    "where it matters)"
                )
            elif not c["seed_stability"].passed:
                reasons.append("there is an edge but it does not hold on enough training seeds")
        elif timing and not c["consistency"].passed:
            reasons.append(
                "the passes are not consistent, yet their average position times the market "
                "better than random (but does not beat buy-and-hold): partly learned, or too "
                "little data"
            )
        if not reasons:
            reasons.append(
                f"some seeds show an edge the pool does not confirm (no edge vs "
                f"{' and '.join(failed_edges)})"
            )
        why = "; ".join(reasons)
    head = _HEADLINES[label].format(
        k=k, failed=" and ".join(failed_edges) or "the nulls", why=why, sample=sample.describe()
    )
    if sample.in_sample and label != IN_SAMPLE:
        head = f"IN-SAMPLE ({sample.describe()}): {head}"
    lines = [head]
    for check in c.values():
        lines.append(f"- {check.name} [{'pass' if check.passed else 'FAIL'}]: {check.description}.")
    return "\n".join(lines)


def naive_pass_ttest(policy_returns: ArrayLike) -> tuple[float, float]:
    """The naive test the verdict does NOT use: one-sided t-test of pass totals > 0.

    Treats the ``n_seeds * K`` pass total log returns as independent samples. They are not:
    every pass sees the same market path, so their spread measures only the policy's action
    noise, not the market's. A decisive rule with no edge has a tiny spread and a t-statistic
    as large as its (lucky or unlucky) realised return, so the test flags noise as skill
    (see the calibration table in ``docs/evaluator.md``).

    Args:
        policy_returns: ``[n_seeds, K, n_bars]`` (or ``[K, n_bars]``) per-bar log returns.

    Returns:
        ``(t, p)``; ``p`` is 1.0 when all passes are identical and not positive, 0.0 when
        identical and positive.
    """
    pr = np.asarray(policy_returns, dtype=np.float64)
    if pr.ndim not in (2, 3):
        raise ValueError(
            f"policy_returns must have shape [n_seeds, K, n_bars] or [K, n_bars]; got {pr.shape}."
        )
    totals = pr.sum(axis=-1).ravel()
    if totals.size < 2:
        raise ValueError("naive_pass_ttest needs at least 2 passes.")
    if np.ptp(totals) == 0.0:
        mean = float(totals[0])
        return (math.copysign(math.inf, mean) if mean else 0.0), (0.0 if mean > 0 else 1.0)
    res = sps.ttest_1samp(totals, 0.0, alternative="greater")
    return float(res.statistic), float(res.pvalue)
