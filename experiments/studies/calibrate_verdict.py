"""Calibrate the verdict on synthetic markets and policies whose truth is known.

Usage::

    python -m experiments.studies.calibrate_verdict                  # 200 trials per scenario
    python -m experiments.studies.calibrate_verdict --trials 50 --no-write \
        --only rw-random ar-exploit

Prints the table of verdict frequencies per scenario (with the naive t-test on pass
results next to it) and writes it into the "Calibration table" section of
``docs/evaluator.md``. Exit status 1 if a requirement of issues 7 and 15 is missed:

* LEARNED in every no-skill scenario <= 5% (random walks, seasonal walks, uneven seeds,
  a checkpoint selected on the test split);
* level of the random-timing test on a seasonal walk within 1.5 points of ``edge_alpha``;
* LEARNED on the policy exploiting a planted edge >= 90% (>= 80% on a seasonal market);
* RANDOM on random policies >= 95%.

The synthetic world (deliberately simple; the real cost model lives in ``envs/``):

* **market**: per-bar log returns ``m_t``; a driftless random walk ``m_t ~ N(0, s^2)``
  (GBM, no edge can exist), a random walk with drift, or AR(1) on returns
  ``m_t = phi m_{t-1} + e_t`` with stationary sd ``s`` (a planted, learnable edge:
  ``sign(m_{t-1})`` predicts ``m_t``); the seasonal variants give each bar the volatility
  of its hour of a 24-bar day (``session_vol`` times higher in ``session_hours``, the
  European/US session of FX), keeping the average variance ``s^2``.
* **policy**: per seed a mean path ``mu_t`` (a deterministic function of *past* returns, or
  noise) and an action sigma; pass k's position is ``p_t = clip(mu_t + sigma z_kt, -1, 1)``
  with fresh ``z`` per pass, as a Gaussian policy's sampled actions.
* **pass return**: ``r_t = p_t m_t - c |p_t - p_{t-1}|`` (``p_{-1} = 0``): the
  position's share of the market's log return (linearised) minus a proportional cost ``c``
  per unit of turnover.
* **exposure-matched random pass**: :func:`evaluation.backtest.exposure_matched_random`
  of a fresh draw ``p'`` of the policy's positions (``|p'_t|`` with the path's own
  direction pattern shifted to a random time): same exposure and turnover, random timing,
  same costs; the backtester draws exactly this null.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy
from numpy.typing import NDArray
from scipy import stats as sps
from scipy.signal import lfilter

from evaluation.backtest import exposure_matched_random
from evaluation.verdict import (
    CONSISTENT_BUT_NO_EDGE,
    IN_SAMPLE,
    INCONCLUSIVE,
    LABELS,
    LEARNED,
    RANDOM,
    Sample,
    VerdictConfig,
    _circular_timing,
    judge,
    naive_pass_ttest,
    relabel,
)

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "evaluator.md"
BEGIN = "<!-- calibration-table:begin (written by experiments/studies/calibrate_verdict.py) -->"
END = "<!-- calibration-table:end -->"


@dataclass(frozen=True)
class SimConfig:
    """The synthetic world of the calibration (see the module docstring)."""

    n_bars: int = 2000  # test bars per trial (~4 months of H1 FX candles)
    n_seeds: int = 5  # training seeds per trial
    n_passes: int = 20  # stochastic passes per seed, K
    n_random_passes: int = 20  # exposure-matched random passes per seed, K_r
    sigma_market: float = 1e-3  # per-bar sd of market log returns (EURUSD H1 ~ 0.1%)
    drift: float = 5e-5  # per-bar drift of the trending random walk (~+10% over the test)
    phi: float = 0.2  # AR(1) coefficient of the planted edge
    cost: float = 2e-5  # cost per unit of |position change| (0.2 bp of equity)
    conviction: float = 0.9  # |mean action| of decisive rules
    decisive_sigma: float = 0.15  # action sigma of decisive policies
    random_sigma: float = 1.0  # action sigma of random policies
    random_mean_sd: float = 0.2  # sd of a random policy's (noise) mean action
    max_lookback: int = 60  # an arbitrary rule's lookback is uniform on 2..max_lookback
    period: int = 24  # bars per day of the seasonal markets (H1)
    session_hours: tuple[int, int] = (7, 17)  # [start, end) hours of the volatile session
    session_vol: float = 3.0  # session volatility / quiet-hour volatility
    n_checkpoints: int = 20  # checkpoints per seed a test-split selection looks at


Array = NDArray[np.float64]
MarketFn = Callable[[np.random.Generator, SimConfig], Array]
PolicyFn = Callable[[np.random.Generator, Array, SimConfig], tuple[Array, Array]]


# --------------------------------------------------------------------------- markets


def random_walk(rng: np.random.Generator, sim: SimConfig) -> Array:
    """Driftless random walk: ``[n_bars]`` iid N(0, s^2) log returns."""
    return rng.normal(0.0, sim.sigma_market, sim.n_bars)


def trending_walk(rng: np.random.Generator, sim: SimConfig) -> Array:
    """Random walk with drift: iid N(drift, s^2); buy-and-hold wins in expectation."""
    return rng.normal(sim.drift, sim.sigma_market, sim.n_bars)


def ar1_market(phi: float | None = None) -> MarketFn:
    """AR(1) log returns with coefficient ``phi`` (default ``sim.phi``) and sd ``s``."""

    def make(rng: np.random.Generator, sim: SimConfig) -> Array:
        f = sim.phi if phi is None else phi
        burn = 200
        e = rng.normal(0.0, sim.sigma_market * np.sqrt(1.0 - f * f), sim.n_bars + burn)
        return lfilter([1.0], [1.0, -f], e)[burn:]

    return make


def hourly_vol(sim: SimConfig) -> Array:
    """``[n_bars]`` volatility multiplier of each bar's hour; mean square 1.

    Bar ``t`` is hour ``t mod period``; hours in ``session_hours`` are ``session_vol``
    times more volatile than the others (FX: the European/US session).
    """
    hour = np.arange(sim.n_bars) % sim.period
    lo, hi = sim.session_hours
    v = np.where((hour >= lo) & (hour < hi), sim.session_vol, 1.0)
    profile = np.where((np.arange(sim.period) >= lo) & (np.arange(sim.period) < hi),
                       sim.session_vol, 1.0)
    return v / np.sqrt(np.mean(profile**2))


def seasonal_walk(rng: np.random.Generator, sim: SimConfig) -> Array:
    """Driftless random walk with an intraday volatility cycle: N(0, (s v_hour)^2)."""
    return rng.normal(0.0, sim.sigma_market, sim.n_bars) * hourly_vol(sim)


def seasonal_ar1(phi: float | None = None) -> MarketFn:
    """AR(1) log returns whose innovations carry the intraday volatility cycle."""

    def make(rng: np.random.Generator, sim: SimConfig) -> Array:
        f = sim.phi if phi is None else phi
        e = rng.normal(0.0, sim.sigma_market * np.sqrt(1.0 - f * f), sim.n_bars)
        return lfilter([1.0], [1.0, -f], e * hourly_vol(sim))

    return make


# --------------------------------------------------------------------------- policies


def momentum_means(m: Array, lookbacks: Sequence[int], conviction: float) -> Array:
    """``[len(lookbacks), n_bars]`` means ``conviction * sign(sum of the last L returns)``.

    Bar t uses returns up to t-1 only (no look-ahead); the first bar is flat.
    """
    c = np.concatenate([[0.0], np.cumsum(m)])
    t = np.arange(m.size)
    return np.stack([conviction * np.sign(c[t] - c[np.maximum(t - lb, 0)]) for lb in lookbacks])


def _tile(mu: Array, sim: SimConfig, sigma: float) -> tuple[Array, Array]:
    return np.broadcast_to(mu, (sim.n_seeds, sim.n_bars)).copy(), np.full(sim.n_seeds, sigma)


def random_policy(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Untrained policy: noise mean per seed, large sigma."""
    mu = rng.normal(0.0, sim.random_mean_sd, (sim.n_seeds, sim.n_bars))
    return mu, np.full(sim.n_seeds, sim.random_sigma)


def arbitrary_rules(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Each seed a decisive momentum rule with its own random lookback (no edge on a walk)."""
    lookbacks = rng.integers(2, sim.max_lookback + 1, sim.n_seeds)
    return momentum_means(m, lookbacks, sim.conviction), np.full(sim.n_seeds, sim.decisive_sigma)


def best_of_n_rules(n_rules: int) -> PolicyFn:
    """The momentum rule (lookback 1..n_rules) with the best net return *on the test bars*.

    In-sample selection on the very bars being judged: the worst case for an evaluator
    that only sees the test period, and what an overfit hyper-parameter search produces.
    All seeds get the selected rule.
    """

    def make(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
        mus = momentum_means(m, range(1, n_rules + 1), sim.conviction)
        net = (mus * m - sim.cost * np.abs(np.diff(mus, prepend=0.0, axis=1))).sum(axis=1)
        return _tile(mus[int(np.argmax(net))], sim, sim.decisive_sigma)

    return make


def always_long(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Decisive buy-and-hold: mean +1, small sigma (pure market exposure)."""
    return _tile(np.ones(sim.n_bars), sim, sim.decisive_sigma)


def always_flat(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Never trades: deterministic and flat."""
    return _tile(np.zeros(sim.n_bars), sim, 0.0)


def exploit(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Learned the planted AR(1) edge: ``conviction * sign(m_{t-1})``, small sigma."""
    return _tile(momentum_means(m, [1], sim.conviction)[0], sim, sim.decisive_sigma)


def exploit_noisy(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Right mean, but sigma still as large as a random policy's."""
    return _tile(momentum_means(m, [1], sim.conviction)[0], sim, sim.random_sigma)


def seeds_disagree(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Seeds learned opposite rules: 60% exploit the edge, the rest bet against it."""
    mu, sigma = exploit(rng, m, sim)
    n_bad = sim.n_seeds - int(np.ceil(0.6 * sim.n_seeds))
    if n_bad:
        mu[-n_bad:] *= -1.0
    return mu, sigma


def half_random(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """60% of seeds exploit the edge, the rest never learned (random)."""
    mu, sigma = exploit(rng, m, sim)
    rmu, rsigma = random_policy(rng, m, sim)
    n_bad = sim.n_seeds - int(np.ceil(0.6 * sim.n_seeds))
    if n_bad:
        mu[-n_bad:], sigma[-n_bad:] = rmu[-n_bad:], rsigma[-n_bad:]
    return mu, sigma


def random_runs(rng: np.random.Generator, shape: tuple[int, ...], mean_run: float) -> Array:
    """Random +-1 paths that hold each sign for a geometric number of bars (mean ``mean_run``).

    A decisive policy with no skill: its direction is independent of the market.
    """
    flips = rng.random(shape) < 1.0 / mean_run
    flips[..., 0] = rng.random(shape[:-1]) < 0.5
    return np.where(np.cumsum(flips, axis=-1) % 2 == 0, 1.0, -1.0)


def sized_by_hour(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """No skill, sized by the hour: a random direction per day, large in the volatile session.

    ``conviction`` in session hours, a fifth of it otherwise; each seed its own random daily
    direction. The policy of the issue-15 counterexample: shifts that are not whole days
    move its large positions onto quiet hours.
    """
    n_days = -(-sim.n_bars // sim.period)
    days = rng.choice(np.array([-1.0, 1.0]), (sim.n_seeds, n_days))
    direction = np.repeat(days, sim.period, axis=1)[:, : sim.n_bars]
    hour = np.arange(sim.n_bars) % sim.period
    lo, hi = sim.session_hours
    size = np.where((hour >= lo) & (hour < hi), sim.conviction, 0.2 * sim.conviction)
    return direction * size, np.full(sim.n_seeds, sim.decisive_sigma)


def uneven_seeds(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Seed 0 exploits the planted edge; the others are decisive with no skill.

    The others hold random directions for a day on average (independent of the market),
    as decisive as the skilled seed: the pool has a real edge from one seed only.
    """
    mu, sigma = exploit(rng, m, sim)
    mu[1:] = sim.conviction * random_runs(rng, (sim.n_seeds - 1, sim.n_bars), sim.period)
    return mu, sigma


def selected_on_test(rng: np.random.Generator, m: Array, sim: SimConfig) -> tuple[Array, Array]:
    """Each seed's checkpoint chosen on the test bars: the best of ``n_checkpoints`` rules.

    A seed's checkpoints are momentum rules with random lookbacks (2..max_lookback), none
    with skill on a random walk; the one with the best net return on the very bars being
    judged is kept, per seed (what ``--split validation`` with the ``best`` checkpoint
    does on the validation bars).
    """
    mu = np.empty((sim.n_seeds, sim.n_bars))
    for s in range(sim.n_seeds):
        lookbacks = rng.integers(2, sim.max_lookback + 1, sim.n_checkpoints)
        mus = momentum_means(m, lookbacks, sim.conviction)
        net = (mus * m - sim.cost * np.abs(np.diff(mus, prepend=0.0, axis=1))).sum(axis=1)
        mu[s] = mus[int(np.argmax(net))]
    return mu, np.full(sim.n_seeds, sim.decisive_sigma)


# --------------------------------------------------------------------------- passes


def simulate_passes(
    rng: np.random.Generator, m: Array, mu: Array, sigma: Array, sim: SimConfig
) -> tuple[Array, Array, Array]:
    """Policy and exposure-matched random passes over the market ``m``.

    Args:
        rng: generator.
        m: ``[n_bars]`` market log returns.
        mu: ``[n_seeds, n_bars]`` mean action per seed.
        sigma: ``[n_seeds]`` action sigma per seed.
        sim: the synthetic world.

    Returns:
        ``(policy_returns [S, K, n], random_returns [S, K_r, n], positions [S, K, n])``.
    """

    def draw(k: int) -> Array:
        z = rng.standard_normal((mu.shape[0], k, m.size))
        return np.clip(mu[:, None, :] + sigma[:, None, None] * z, -1.0, 1.0)

    def returns(pos: Array) -> Array:
        return pos * m - sim.cost * np.abs(np.diff(pos, prepend=0.0, axis=2))

    pos = draw(sim.n_passes)
    fresh = draw(sim.n_random_passes)  # [S, K_r, n]
    rand_pos = np.stack([exposure_matched_random(f, rng) for f in fresh])
    return returns(pos), returns(rand_pos), pos


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A synthetic market plus a policy whose truth is known."""

    name: str  # short id used on the command line
    market: str  # market description for the table
    policy: str  # policy description for the table
    truth: str  # what a correct evaluator should say
    make_market: MarketFn  # draws the market's log returns
    make_policy: PolicyFn  # builds mean paths [n_seeds, n_bars] and sigmas [n_seeds]
    requirement: tuple[str, str, float] | None = None  # (label, "<=" or ">=", share)
    random_walk: bool = False  # no skill is possible: LEARNED must stay <= 5%
    period: int = 1  # calendar cycle the verdict is told (shifts of whole cycles)
    sample: Sample = field(default_factory=Sample)  # which bars the verdict is told it judges
    sim: tuple[tuple[str, object], ...] = ()  # SimConfig fields this scenario changes
    timing_level: bool = False  # the random-timing test must keep its level here

    def world(self, sim: SimConfig) -> SimConfig:
        """The synthetic world of this scenario."""
        return replace(sim, **dict(self.sim)) if self.sim else sim


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("rw-random", "random walk", "random policy (sigma 1)", RANDOM,
             random_walk, random_policy, (RANDOM, ">=", 0.95), True),
    Scenario("rw-rule", "random walk", "decisive arbitrary momentum rule per seed",
             CONSISTENT_BUT_NO_EDGE, random_walk, arbitrary_rules, (LEARNED, "<=", 0.05), True),
    Scenario("rw-best-of-30", "random walk", "best of 30 rules, selected on the test bars",
             CONSISTENT_BUT_NO_EDGE, random_walk, best_of_n_rules(30), (LEARNED, "<=", 0.05),
             True),
    Scenario("rw-best-of-100", "random walk", "best of 100 rules, selected on the test bars",
             CONSISTENT_BUT_NO_EDGE, random_walk, best_of_n_rules(100), (LEARNED, "<=", 0.05),
             True),
    Scenario("rw-drift-long", "random walk + drift", "decisive always-long",
             CONSISTENT_BUT_NO_EDGE, trending_walk, always_long, (LEARNED, "<=", 0.05), True),
    Scenario("rw-flat", "random walk", "always flat", CONSISTENT_BUT_NO_EDGE,
             random_walk, always_flat, (LEARNED, "<=", 0.05), True),
    Scenario("ar-exploit", "AR(1) phi=0.2", "exploits the edge, sigma 0.15", LEARNED,
             ar1_market(), exploit, (LEARNED, ">=", 0.90)),
    Scenario("ar-random", "AR(1) phi=0.2", "random policy (sigma 1)", RANDOM,
             ar1_market(), random_policy, (RANDOM, ">=", 0.95)),
    Scenario("ar-exploit-noisy", "AR(1) phi=0.2", "right mean, sigma 1 (not decisive)",
             INCONCLUSIVE, ar1_market(), exploit_noisy),
    Scenario("ar-seeds-disagree", "AR(1) phi=0.2", "3 seeds exploit, 2 bet against",
             INCONCLUSIVE, ar1_market(), seeds_disagree),
    Scenario("ar-half-random", "AR(1) phi=0.2", "3 seeds exploit, 2 random",
             INCONCLUSIVE, ar1_market(), half_random),
    Scenario("ar-exploit-phi0.15", "AR(1) phi=0.15", "exploits the edge (power)", LEARNED,
             ar1_market(0.15), exploit),
    Scenario("ar-exploit-phi0.1", "AR(1) phi=0.1", "exploits the edge (power)", LEARNED,
             ar1_market(0.1), exploit),
    # issue 15: conditions real markets and runs add
    Scenario("rw-seasonal-sized", "seasonal random walk (H1 cycle)",
             "sized by the hour, random daily direction", CONSISTENT_BUT_NO_EDGE,
             seasonal_walk, sized_by_hour, (LEARNED, "<=", 0.05), True, period=24,
             timing_level=True),
    Scenario("rw-seasonal-random", "seasonal random walk (H1 cycle)", "random policy (sigma 1)",
             RANDOM, seasonal_walk, random_policy, (RANDOM, ">=", 0.95), True, period=24),
    Scenario("ar-seasonal-exploit", "seasonal AR(1) phi=0.2", "exploits the edge, sigma 0.15",
             LEARNED, seasonal_ar1(), exploit, (LEARNED, ">=", 0.80), period=24),
    Scenario("ar-uneven-seeds", "AR(1) phi=0.2", "1 seed exploits, 3 decisive without skill "
             "(K = 8)", INCONCLUSIVE, ar1_market(), uneven_seeds, (LEARNED, "<=", 0.05), True,
             sim=(("n_seeds", 4), ("n_passes", 8), ("n_random_passes", 8))),
    Scenario("rw-selected-on-test", "random walk",
             "per seed the best of 20 checkpoints on the test bars (declared)",
             IN_SAMPLE, random_walk, selected_on_test, (LEARNED, "<=", 0.05), True,
             sample=Sample(split="test", checkpoint="best", selected_on="test", n_trials=20)),
)  # fmt: skip

CHECKS = ("consistency", "edge_vs_buy_and_hold", "edge_vs_random_timing", "seed_stability")

SENSITIVITY: dict[str, VerdictConfig] = {
    "default": VerdictConfig(),
    "edge_alpha 0.05": VerdictConfig(edge_alpha=0.05),
    "edge_alpha 0.01": VerdictConfig(edge_alpha=0.01),
    "rho_max 0.3": VerdictConfig(rho_max=0.3),
    "rho_max 0.7": VerdictConfig(rho_max=0.7),
    "min_seed_share 0.6": VerdictConfig(min_seed_share=0.6),
    "min_seed_share 1.0": VerdictConfig(min_seed_share=1.0),
}


@dataclass
class Tally:
    """Counts over the trials of one scenario."""

    trials: int = 0
    labels: dict[str, int] | None = None
    checks: dict[str, int] | None = None
    both_edges: int = 0
    naive: int = 0
    timing_every_bar: int = 0  # timing test passes with shifts of single bars (the old null)
    sensitivity: dict[str, dict[str, int]] | None = None

    def __post_init__(self) -> None:
        self.labels = dict.fromkeys(LABELS, 0)
        self.checks = dict.fromkeys(CHECKS, 0)
        self.sensitivity = {k: dict.fromkeys(LABELS, 0) for k in SENSITIVITY}


def run_scenario(
    scenario: Scenario, trials: int, seed: int, index: int, sim: SimConfig, config: VerdictConfig
) -> Tally:
    """Judge ``trials`` independent draws of a scenario; deterministic given ``seed``."""
    tally = Tally()
    sim = scenario.world(sim)
    for trial in range(trials):
        rng = np.random.default_rng([seed, index, trial])
        m = scenario.make_market(rng, sim)
        mu, sigma = scenario.make_policy(rng, m, sim)
        pr, rr, pos = simulate_passes(rng, m, mu, sigma, sim)
        v = judge(
            pr, rr, m, pos, replace(config, seed=trial), period=scenario.period,
            sample=scenario.sample,
        )
        if scenario.period == 1:
            every_bar_p = v.timing_p
        else:  # what the circular shifts by single bars would say on the same trial
            every_bar_p = float(_circular_timing(pos.mean(axis=(0, 1))[None], m, 1)[3][0])
        tally.timing_every_bar += every_bar_p < config.edge_alpha
        assert tally.labels is not None and tally.checks is not None
        assert tally.sensitivity is not None
        tally.trials += 1
        tally.labels[v.label] += 1
        for name in CHECKS:
            tally.checks[name] += v.checks[name].passed
        tally.both_edges += (
            v.checks["edge_vs_buy_and_hold"].passed and v.checks["edge_vs_random_timing"].passed
        )
        tally.naive += naive_pass_ttest(pr)[1] < config.alpha
        for key, cfg in SENSITIVITY.items():
            tally.sensitivity[key][relabel(v, cfg)] += 1
    return tally


# --------------------------------------------------------------------------- reporting


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%"


def _ci(k: int, n: int) -> str:
    """Clopper-Pearson 95% interval of a share, in percent."""
    lo = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


TIMING_LEVEL_TOLERANCE = 0.015
"""The random-timing test's rejection rate on a seasonal walk must be edge_alpha +- this."""


def requirement_status(
    s: Scenario, t: Tally, config: VerdictConfig | None = None
) -> tuple[str, bool]:
    """Text and pass/fail of the scenario's requirements (LEARNED cap, timing level)."""
    assert t.labels is not None and t.checks is not None
    config = config if config is not None else VerdictConfig()
    parts, ok = [], True
    if s.timing_level:
        k = t.checks["edge_vs_random_timing"]
        good = abs(k / t.trials - config.edge_alpha) <= TIMING_LEVEL_TOLERANCE
        ok &= good
        parts.append(
            f"timing level {config.edge_alpha:.0%} +- {TIMING_LEVEL_TOLERANCE:.1%}: "
            f"{_pct(k, t.trials)} {_ci(k, t.trials)} {'ok' if good else 'MISSED'}"
        )
    reqs = [s.requirement] if s.requirement else []
    if s.random_walk and (LEARNED, "<=", 0.05) not in reqs:
        reqs.append((LEARNED, "<=", 0.05))
    for label, op, share in reqs:
        rate = t.labels[label] / t.trials
        good = rate <= share if op == "<=" else rate >= share
        ok &= good
        parts.append(
            f"{label} {op} {share:.0%}: {_pct(t.labels[label], t.trials)} "
            f"{_ci(t.labels[label], t.trials)} {'ok' if good else 'MISSED'}"
        )
    return "; ".join(parts) or "(none; shown for information)", ok


def render(
    results: list[tuple[Scenario, Tally]], meta: dict[str, str], sim: SimConfig, cfg: VerdictConfig
) -> tuple[str, bool]:
    """Markdown tables of the calibration and whether every requirement holds."""
    all_ok = True
    lines = [
        f"Measured with `{meta['command']}` on {meta['machine']} ({meta['date']}, "
        f"{meta['wall']}). Each trial: {sim.n_seeds} seeds x K = {sim.n_passes} passes "
        f"(+ {sim.n_random_passes} exposure-matched random passes per seed) over "
        f"{sim.n_bars} bars, unless the policy column says otherwise; market sd "
        f"{sim.sigma_market:g}/bar (seasonal markets: hours {sim.session_hours[0]}-"
        f"{sim.session_hours[1] - 1} of a {sim.period}-bar day {sim.session_vol:g}x as volatile, "
        f"same mean variance), cost {sim.cost:g} per unit turnover; random passes matched on "
        f"exposure and turnover. Verdict defaults: alpha = {cfg.alpha}, "
        f"edge_alpha = {cfg.edge_alpha}, rho_max = {cfg.rho_max}, "
        f"n_windows = {cfg.n_windows}, {cfg.bootstrap} bootstrap "
        f"(block n^(1/3)), n_boot = {cfg.n_boot}, min_seed_share = {cfg.min_seed_share}. "
        f"Brackets: Clopper-Pearson 95% intervals.",
        "",
        "| scenario | market | policy | truth | trials | "
        + " | ".join(LABELS)
        + " | naive t-test says skill | requirement |",
        "|---|---|---|---|---:|" + "---:|" * len(LABELS) + "---:|---|",
    ]
    for s, t in results:
        assert t.labels is not None
        status, ok = requirement_status(s, t, cfg)
        all_ok &= ok
        cells = [_pct(t.labels[lab], t.trials) for lab in LABELS]
        lines.append(
            f"| {s.name} | {s.market} | {s.policy} | {s.truth} | {t.trials} | "
            + " | ".join(cells)
            + f" | {_pct(t.naive, t.trials)} | {status} |"
        )
    lines += [
        "",
        "Share of trials in which each check passes (the naive t-test: one-sided t-test of "
        "the n_seeds x K pass total log returns > 0 at 5%):",
        "",
        "| scenario | timing period | consistency | edge vs buy-and-hold | edge vs random timing "
        "| both edges | seed stability | timing with single-bar shifts (old null) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, t in results:
        assert t.checks is not None
        lines.append(
            f"| {s.name} | {s.period} | "
            + " | ".join(_pct(t.checks[c], t.trials) for c in CHECKS[:3])
            + f" | {_pct(t.both_edges, t.trials)} | {_pct(t.checks[CHECKS[3]], t.trials)} | "
            + f"{_pct(t.timing_every_bar, t.trials)} |"
        )
    keys = list(SENSITIVITY)
    lines += [
        "",
        "Sensitivity (same trials, decision rule re-applied with one threshold changed; "
        "LEARNED share, and RANDOM share for the random policies):",
        "",
        "| scenario | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for s, t in results:
        assert t.sensitivity is not None
        label = RANDOM if s.truth == RANDOM else (IN_SAMPLE if s.sample.in_sample else LEARNED)
        lines.append(
            f"| {s.name} ({label}) | "
            + " | ".join(_pct(t.sensitivity[k][label], t.trials) for k in keys)
            + " |"
        )
    return "\n".join(lines), all_ok


def machine_description() -> str:
    """CPU model, cores, OS and library versions (no host names)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release().split('-')[0]}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )


def write_doc(table: str, path: Path = DOC_PATH) -> None:
    """Replace the calibration block of ``docs/evaluator.md`` (atomic write)."""
    block = f"{BEGIN}\n{table}\n{END}"
    text = path.read_text() if path.exists() else "# Evaluator\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Calibration table\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Calibrate the verdict on synthetic markets/policies with known truth.",
        epilog="Example: python -m experiments.studies.calibrate_verdict --trials 200",
    )
    parser.add_argument("--trials", type=int, default=200, help="trials per scenario")
    parser.add_argument("--seed", type=int, default=0, help="master seed")
    parser.add_argument(
        "--only", nargs="*", metavar="NAME", help="run only these scenarios (default: all)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update docs/evaluator.md")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    names = {s.name for s in SCENARIOS}
    unknown = set(args.only or ()) - names
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {sorted(names)}")

    sim, cfg = SimConfig(), VerdictConfig()
    start = time.perf_counter()
    results = []
    for i, s in enumerate(SCENARIOS):
        if args.only and s.name not in args.only:
            continue
        t0 = time.perf_counter()
        tally = run_scenario(s, args.trials, args.seed, i, sim, cfg)
        assert tally.labels is not None
        print(
            f"{s.name:>20}: "
            + ", ".join(f"{k} {_pct(v, tally.trials)}" for k, v in tally.labels.items())
            + f", naive {_pct(tally.naive, tally.trials)}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        results.append((s, tally))
    wall = time.perf_counter() - start
    command = "python -m experiments.studies.calibrate_verdict " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    meta = {
        "command": command.strip(),
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "wall": f"{wall / 60:.1f} min wall time, one process",
    }
    table, ok = render(results, meta, sim, cfg)
    print()
    print(table)
    if not args.no_write:
        write_doc(table)
        print(f"\nwrote the calibration table into {DOC_PATH}")
    if not ok:
        print("\nA REQUIREMENT IS MISSED (see the requirement column).", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
