"""Backtest one or many trained policies across K stochastic passes, judge, and summarise.

For each policy (one per training seed) :func:`backtest` runs, over the same test bars and
costs: K stochastic passes (sampled actions), one deterministic pass (the mean), and K
**exposure-matched random** passes (the policy's own |position| path with its own
direction pattern shifted to a random time: same exposure and turnover, random timing, no
skill; :func:`exposure_matched_random`); plus
flat and buy-and-hold once. A policy's passes go through the batched env in lockstep; the
MLKV policy encodes the test series once and shares it across its K passes. The random
passes follow in a second walk of the same env and costs (their shifted direction path
can look ahead, so it needs the policy's whole walk: 5 bytes per pass-bar are kept for
it, see :func:`policy_passes`). Policies whose actors stack walk in lockstep too, several
at a time (:func:`lockstep_groups`), with the numbers each gets alone. The passes are not stored:
:mod:`evaluation.streaming` folds each chunk of bars into every statistic the summary and
the verdict (:func:`evaluation.verdict.judge_inputs`) need, so memory does not grow with
passes x bars x seeds; ``keep_ledgers=True`` also keeps the per-bar arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from agents.actor import stackable
from envs import EnvConfig
from envs.kernels import M_CLOSE, MarketArrays

from . import stats
from .passes import (
    CHUNK,
    PassResult,
    ScheduledRun,
    actor_program,
    encodes_bars,
    iter_lockstep_passes,
    iter_policy_passes,
    walk_times,
)
from .streaming import PassAccumulator, PassSummary, RandomTargets, random_timing
from .verdict import Sample, Verdict, VerdictConfig, VerdictInputs, judge_inputs

FORMAT = "mlkv-trader-backtest"
VERSION = 1


@dataclass(frozen=True)
class SeedPasses:
    """Everything run for one policy: K stochastic, 1 deterministic, K random passes.

    Each group is a :class:`~evaluation.streaming.PassSummary` (the statistics, accumulated
    while the passes ran); its ``ledgers`` hold the per-bar ``[K, N]`` arrays only when the
    backtest was asked to keep them.
    """

    name: str  # run directory or a label
    stochastic: PassSummary  # K passes
    deterministic: PassSummary  # 1 pass
    random: PassSummary  # K exposure-matched random passes


@dataclass(frozen=True)
class BacktestResult:
    """All passes of all policies over one test period, the baselines and the verdict."""

    seeds: list[SeedPasses]
    buy_and_hold: PassSummary  # 1 pass
    flat: PassSummary  # 1 pass
    price: np.ndarray  # float64 [N] close of the bar each step is marked at
    verdict: Verdict
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def times(self) -> pd.DatetimeIndex:
        return self.buy_and_hold.times

    def summary(self) -> dict[str, Any]:
        """The JSON document written as ``backtest.json`` (see :func:`summarise`)."""
        return summarise(self)


def exposure_matched_random(positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-timing copies of position paths, matched on exposure *and* turnover.

    Row ``k``: ``|p_t| * b * d_{(t - u) mod N}``, where ``d_t`` is the sign of the row's own
    positions (zeros take the previous non-zero sign), circularly shifted by a random
    ``u`` in ``1..N-1`` and flipped by a random sign ``b``. So each random pass holds the
    policy's exposure ``|p_t|`` bar by bar, changes direction as often as the policy does
    (the same holding runs, one more at most at the wrap), and pays about the same costs;
    only its timing is random. A sign drawn independently per bar instead flips every
    other bar and pays ~1 unit of turnover per bar, so the random band would measure costs
    rather than timing (issue 15). Shifting a path against the returns keeps its own
    autocorrelation: the random-timing idea of the verdict's circular-shift test
    (Lotwick & Silverman 1982).

    Args:
        positions: ``[K, N]`` positions of K passes.
        rng: the generator of the shifts and signs.

    Returns:
        ``[K, N]`` target positions for the random passes.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"positions must have shape [K, N]; got {p.shape}.")
    k, n = p.shape
    sign = np.sign(p)
    # zeros take the previous non-zero sign (leading zeros the first one; all zero: +1)
    idx = np.where(sign != 0.0, np.arange(n)[None, :], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    first = np.argmax(sign != 0.0, axis=1)
    idx = np.where(idx < 0, first[:, None], idx)
    direction = np.take_along_axis(sign, idx, axis=1)
    direction = np.where(direction == 0.0, 1.0, direction)
    shift, flip = random_timing(rng, k, n)  # streamed by RandomTargets: the same draws
    cols = (np.arange(n)[None, :] - shift[:, None]) % n
    return np.abs(p) * flip[:, None] * np.take_along_axis(direction, cols, axis=1)


def backtest(
    policies: Any,
    candles: pd.DataFrame,
    *,
    passes: int,
    env_config: EnvConfig,
    seed: int = 0,
    names: list[str] | None = None,
    verdict_config: VerdictConfig | None = None,
    on_policy_done: Any = None,
    keep_ledgers: bool = False,
    sample: Sample | None = None,
    bars_per_year: float | None = None,
    period: int | None = None,
) -> BacktestResult:
    """Backtest policies across ``passes`` stochastic passes each, plus baselines, and judge.

    The same as :func:`policy_passes` for each policy (index ``i``) followed by
    :func:`combine`, which is how a distributed backtest runs it, with the same numbers.

    Args:
        policies: one policy or a list (one per training seed): MLKV policies, SB3
            algorithms (their ``.policy`` is used) or anything with
            ``predict(obs, deterministic=...)``. Load run directories first with
            :func:`experiments.runs.load_policy`.
        candles: the test period.
        passes: K >= 2 stochastic passes (and K random passes) per policy.
        env_config: costs and window of the env; ``mode`` is forced to ``"test"``.
        seed: seeds the sampled actions and the random passes; same seed, same result.
        names: a label per policy (default ``policy-<i>``).
        verdict_config: thresholds of the verdict.
        on_policy_done: optional callback ``(index, name) -> None`` for progress display.
        keep_ledgers: also keep every pass's per-bar arrays (``PassSummary.ledgers``);
            memory ``~50 bytes x passes x bars``. Off: only the streaming statistics,
            ``O(passes x (n_windows + plot points) + bars)`` per policy, plus, while a
            lockstep group of policies runs, the direction paths the random null needs (5
            bytes x passes x bars per policy, freed after it; a group holds at most
            :data:`LOCKSTEP_BYTES` of them, see :func:`lockstep_groups`).
        sample: which split the candles are and how the checkpoints were chosen (see
            :class:`evaluation.verdict.Sample`); None: an untouched test split, one trial.
        bars_per_year: annualisation; None infers it from the candles' frequency
            (:func:`evaluation.stats.infer_bars_per_year`). Pass the whole dataset's value.
        period: calendar cycle of the random-timing null in bars; None detects it from the
            timestamps (:func:`evaluation.stats.seasonal_period`: 24 for H1, 5 for daily).
    """
    policies = list(policies) if isinstance(policies, (list, tuple)) else [policies]
    if not policies:
        raise ValueError("backtest needs at least one policy.")
    names = names or [f"policy-{i}" for i in range(len(policies))]
    if len(names) != len(policies):
        raise ValueError(f"got {len(names)} names for {len(policies)} policies.")
    n_windows = (verdict_config or VerdictConfig()).n_windows
    policies = [getattr(p, "policy", p) for p in policies]  # an SB3 algorithm -> its policy
    market = _market(candles)
    n_steps = len(walk_times(market, _test_env(env_config)))
    seeds: list[SeedPasses] = []
    for group in lockstep_groups(policies, passes, n_steps):
        seeds += lockstep_passes(
            [policies[i] for i in group], market, indices=group, passes=passes,
            env_config=env_config, seed=seed, names=[names[i] for i in group],
            n_windows=n_windows, keep_ledgers=keep_ledgers, on_policy_done=on_policy_done,
        )
    return combine(
        seeds, candles, env_config=env_config, seed=seed, verdict_config=verdict_config,
        keep_ledgers=keep_ledgers, sample=sample, bars_per_year=bars_per_year, period=period,
    )


def _market(candles: pd.DataFrame | MarketArrays) -> MarketArrays:
    """The per-bar arrays of ``candles`` (computed once, shared by all walks over them)."""
    return candles if isinstance(candles, MarketArrays) else MarketArrays.from_candles(candles)


def _scheduled(
    actions: np.ndarray,
    candles: pd.DataFrame | MarketArrays,
    env_config: EnvConfig,
    seed: int,
    n_windows: int,
    keep_ledgers: bool,
) -> PassSummary:
    """Passes that hold fixed target positions ``[n_passes, 1]`` throughout."""
    times = walk_times(candles, _test_env(env_config))
    acc = PassAccumulator(actions.shape[0], times, n_windows, keep_ledgers=keep_ledgers)
    run = ScheduledRun(candles, _test_env(env_config), actions.shape[0], seed)
    for chunk in run.walk(np.asarray(actions)):
        acc.update(chunk.log_returns, chunk.positions, chunk.costs)
    return acc.finish()


def _test_env(env_config: EnvConfig) -> EnvConfig:
    return env_config.replace(mode="test", action="continuous")


LOCKSTEP_BYTES = 256 * 2**20
"""Most memory the random null's stored direction paths (5 bytes per pass-bar) of one
lockstep group of policies may take: :func:`backtest` walks as many policies together as
fit (all five seeds of an H1 year at K = 100; one at a time for a year of minute bars)."""


def lockstep_groups(policies: list[Any], passes: int, n_steps: int) -> list[list[int]]:
    """Indices of the policies :func:`backtest` walks together, in order.

    Consecutive policies share a walk when their actors stack
    (:func:`agents.actor.stackable`, checked without stacking the weights) and their null
    paths fit in :data:`LOCKSTEP_BYTES`; anything else walks alone.
    """
    size = max(1, LOCKSTEP_BYTES // max(1, 5 * passes * n_steps))
    groups: list[list[int]] = []
    for i, policy in enumerate(policies):
        group = groups[-1] if groups else None
        if (
            group is not None
            and len(group) < size
            and encodes_bars(policy)
            and all(encodes_bars(policies[j]) for j in group)
            and stackable([actor_program(policies[j]) for j in [*group, i]])
        ):
            group.append(i)
        else:
            groups.append([i])
    return groups


def policy_passes(
    policy: Any,
    candles: pd.DataFrame,
    *,
    index: int,
    passes: int,
    env_config: EnvConfig,
    seed: int = 0,
    name: str | None = None,
    n_windows: int | None = None,
    keep_ledgers: bool = False,
    pass_slice: slice | None = None,
) -> SeedPasses:
    """One policy's K stochastic passes, its deterministic pass and K random passes.

    Seeded by ``(seed, index)`` alone, so policy ``index`` of a set gets the same passes
    whether the set runs in one process (:func:`backtest` walks several policies in
    lockstep, :func:`lockstep_passes`) or as one task per policy (or one task per pass
    group). Two streaming phases, a chunk of bars at a time:

    1. the K stochastic passes and the deterministic one walk the test period in lockstep;
       their statistics are folded in as they go, and the group's ``|p_t|`` (float32) and
       direction (int8) are kept for the random null (:class:`RandomTargets`);
    2. the K random passes (:func:`exposure_matched_random`: the policy pass's exposure
       with its own direction path shifted by a random ``u``; the shift can look ahead,
       so this phase needs the whole policy walk) then walk the same env and cost path
       (the replay kernel) with targets taken from that stored path chunk by chunk.

    Memory: 5 bytes per pass-bar of this policy's passes while it runs (freed after it),
    besides the accumulators; nothing else of size ``K x n_bars`` is kept unless
    ``keep_ledgers``.

    Args:
        policy: as in :func:`backtest`.
        candles: the test period.
        index: the policy's position in its set.
        passes: K >= 2.
        env_config: costs and window of the env; ``mode`` is forced to ``"test"``.
        seed: the backtest's seed.
        name: its label (default ``policy-<index>``).
        n_windows: dispersion windows of the verdict (default ``VerdictConfig().n_windows``).
        keep_ledgers: also keep the per-bar arrays of every pass.
        pass_slice: keep only these passes of the K (a contiguous group, e.g.
            ``slice(0, 25)``), with the numbers they have in the full run; the
            deterministic pass comes with the group that ends at K. :func:`merge_pass_groups`
            joins the groups of one policy back together (a long seed split over workers).
    """
    return lockstep_passes(
        [policy], candles, indices=[index], passes=passes, env_config=env_config, seed=seed,
        names=[name] if name else None, n_windows=n_windows, keep_ledgers=keep_ledgers,
        pass_slice=pass_slice,
    )[0]


def lockstep_passes(
    policies: list[Any],
    candles: pd.DataFrame | MarketArrays,
    *,
    indices: list[int],
    passes: int,
    env_config: EnvConfig,
    seed: int = 0,
    names: list[str] | None = None,
    n_windows: int | None = None,
    keep_ledgers: bool = False,
    pass_slice: slice | None = None,
    on_policy_done: Any = None,
) -> list[SeedPasses]:
    """:func:`policy_passes` for several policies whose phase 1 walks in one lockstep run.

    The policies' K + 1 passes each step together (:func:`iter_lockstep_passes`: one actor
    call and one env call per step for all of them); each policy keeps its own seeds, so
    every policy gets exactly the numbers :func:`policy_passes` gives it alone. Phase 2
    (the random passes) then runs policy by policy. Policies must stack
    (:func:`lockstep_groups`); one policy always runs.

    Args:
        policies: S policies.
        indices: ``[S]`` each policy's position in its set (seeds its passes).
        names: ``[S]`` labels (default ``policy-<index>``).
        on_policy_done: optional callback ``(index, name)`` after each policy's phase 2.
        passes, candles, env_config, seed, n_windows, keep_ledgers, pass_slice: as in
            :func:`policy_passes`.
    """
    if int(passes) != passes or passes < 2:
        raise ValueError(
            f"passes must be an integer >= 2 (K passes make a dispersion), got {passes}."
        )
    n_windows = VerdictConfig().n_windows if n_windows is None else int(n_windows)
    policies = [getattr(p, "policy", p) for p in policies]  # an SB3 algorithm -> its policy
    names = names or [f"policy-{i}" for i in indices]
    env = _test_env(env_config)
    candles = _market(candles)  # features once, shared by every walk below
    times = walk_times(candles, env)
    n_steps = len(times)
    lo, hi, _ = (pass_slice or slice(0, passes)).indices(passes)
    group = np.arange(lo, hi)
    with_det = hi == passes

    def accumulators(sigma: bool) -> list[PassAccumulator]:
        return [
            PassAccumulator(n, times, n_windows, sigma=sigma, keep_ledgers=keep_ledgers)
            for n in (group.size, 1)
        ]

    sto, det = zip(*(accumulators(True) for _ in policies), strict=True)
    # exposure_matched_random(positions, default_rng([seed, index])), streamed: the shifts
    # and flips of all K passes are drawn here, the group's rows kept
    targets = [
        RandomTargets(np.random.default_rng([seed, i]), passes, n_steps, group) for i in indices
    ]
    # phase 1: each policy's K stochastic passes and its deterministic one (last row), all
    # policies in one lockstep run
    mask = np.arange(passes + 1) == passes
    pass_seeds = [seed + 7919 * (i + 1) for i in indices]
    if len(policies) == 1 and not encodes_bars(policies[0]):  # generic: one big chunk
        walks = (
            [chunk]
            for chunk in iter_policy_passes(
                policies[0], candles, env, n_passes=passes + 1, deterministic=mask,
                seed=pass_seeds[0],
            )
        )
    else:
        walks = iter_lockstep_passes(
            policies, candles, env, n_passes=passes + 1, deterministic=mask, seeds=pass_seeds
        )
    for chunks in walks:
        for s, chunk in enumerate(chunks):
            for first in range(0, chunk.positions.shape[1], CHUNK):
                cols = slice(first, first + CHUNK)
                pos, ret = chunk.positions[:, cols], chunk.log_returns[:, cols]
                cost, mean, sigma = chunk.costs[:, cols], chunk.mean[:, cols], chunk.sigma[:, cols]
                sto[s].update(ret[group], pos[group], cost[group], mean[group], sigma[group])
                if with_det:
                    det[s].update(ret[-1:], pos[-1:], cost[-1:], mean[-1:], sigma[-1:])
                targets[s].add(pos[group])
    # phase 2: each policy's random passes through the same env and costs, chunk by chunk
    results = []
    for s, (index, name) in enumerate(zip(indices, names, strict=True)):
        rnd = PassAccumulator(group.size, times, n_windows, keep_ledgers=keep_ledgers)
        random_run = ScheduledRun(candles, env, group.size, seed)
        for t0 in range(0, n_steps, CHUNK):
            r = random_run.step(targets[s].take(t0, min(t0 + CHUNK, n_steps)))
            rnd.update(r.log_returns, r.positions, r.costs)
        targets[s] = None  # free this policy's null path before the next one's walk
        deterministic = det[s].finish() if with_det else None
        results.append(SeedPasses(name, sto[s].finish(), deterministic, rnd.finish()))
        if on_policy_done is not None:
            on_policy_done(index, name)
    return results


def merge_pass_groups(groups: list[SeedPasses]) -> SeedPasses:
    """One policy's passes from contiguous groups (:func:`policy_passes` ``pass_slice``).

    The groups must be in pass order and the last one must hold the deterministic pass;
    the result equals the single run's (per-bar means are pass-count weighted sums of the
    groups' means, so they agree to rounding).
    """
    if not groups:
        raise ValueError("merge_pass_groups needs at least one group.")
    if groups[-1].deterministic is None:
        raise ValueError("the last pass group must end at K (it holds the deterministic pass).")
    return SeedPasses(
        groups[0].name,
        _merge([g.stochastic for g in groups]),
        groups[-1].deterministic,
        _merge([g.random for g in groups]),
    )


def _merge(parts: list[PassSummary]) -> PassSummary:
    if len(parts) == 1:
        return parts[0]
    sizes = np.array([p.n_passes for p in parts], dtype=np.float64)
    weights = sizes / sizes.sum()
    ledgers = None
    if all(p.ledgers is not None for p in parts):
        ledgers = PassResult(
            parts[0].times,
            *(
                np.concatenate([getattr(p.ledgers, f) for p in parts])
                for f in ("positions", "log_returns", "costs", "mean", "sigma")
            ),
        )
    sigma = None
    if parts[0].sigma_mean is not None:
        sigma = sum(w * p.sigma_mean for w, p in zip(weights, parts, strict=True))
    return PassSummary(
        times=parts[0].times,
        state=np.concatenate([p.state for p in parts]),
        var_95=np.concatenate([p.var_95 for p in parts]),
        cvar_95=np.concatenate([p.cvar_95 for p in parts]),
        window_totals=np.concatenate([p.window_totals for p in parts]),
        mean_returns=sum(w * p.mean_returns for w, p in zip(weights, parts, strict=True)),
        mean_positions=sum(w * p.mean_positions for w, p in zip(weights, parts, strict=True)),
        plot_bars=parts[0].plot_bars,
        plot_cum=np.concatenate([p.plot_cum for p in parts]),
        sigma_mean=sigma,
        ledgers=ledgers,
    )


def combine(
    seeds: list[SeedPasses],
    candles: pd.DataFrame,
    *,
    env_config: EnvConfig,
    seed: int = 0,
    verdict_config: VerdictConfig | None = None,
    keep_ledgers: bool = False,
    sample: Sample | None = None,
    bars_per_year: float | None = None,
    period: int | None = None,
) -> BacktestResult:
    """Buy-and-hold and flat on the same bars, and one verdict over all policies' passes.

    ``keep_ledgers``, ``sample``, ``bars_per_year`` and ``period`` as in :func:`backtest`.
    """
    cfg = verdict_config or VerdictConfig()
    n_windows = cfg.n_windows
    market = _market(candles)
    buy_and_hold = _scheduled(np.ones((1, 1)), market, env_config, seed, n_windows, keep_ledgers)
    flat = _scheduled(np.zeros((1, 1)), market, env_config, seed, n_windows, keep_ledgers)
    n_steps = buy_and_hold.n_bars
    times = buy_and_hold.times
    if period is None:
        period = min(stats.seasonal_period(times), max(1, n_steps // 2))
    if bars_per_year is None:
        bars_per_year = stats.infer_bars_per_year(times)
    smp = sample if sample is not None else Sample()
    for s in seeds:
        if s.stochastic.window_totals.shape[1] != n_windows:
            raise ValueError(
                f"the passes of {s.name} were accumulated over "
                f"{s.stochastic.window_totals.shape[1]} windows; the verdict asks for "
                f"{n_windows}: run policy_passes with n_windows={n_windows}."
            )
    inputs = VerdictInputs(
        policy_window_totals=np.stack([s.stochastic.window_totals for s in seeds]),
        random_window_totals=np.stack([s.random.window_totals for s in seeds]),
        policy_mean_returns=np.stack([s.stochastic.mean_returns for s in seeds]),
        policy_mean_positions=np.stack([s.stochastic.mean_positions for s in seeds]),
        policy_totals=np.stack([s.stochastic.totals for s in seeds]),
        market_returns=buy_and_hold.mean_returns,
    )
    verdict = judge_inputs(inputs, cfg, period=period, sample=smp)
    price = market.market[-n_steps:, M_CLOSE].copy()
    settings = {
        "passes": seeds[0].stochastic.n_passes,
        "seed": seed,
        "env": _test_env(env_config).to_dict(),
        "n_bars": n_steps,
        "policies": [s.name for s in seeds],
        "bars_per_year": float(bars_per_year),
        "timing_period": int(period),
        "split": smp.split,
        "checkpoint": smp.checkpoint,
        "selected_on": smp.selected_on,
        "n_trials": smp.n_trials,
        "in_sample": smp.in_sample,
    }
    return BacktestResult(seeds, buy_and_hold, flat, price, verdict, settings)


def _band(cum: np.ndarray) -> dict[str, list[float]]:
    q = np.quantile(cum, [0.05, 0.5, 0.95], axis=0)
    return {"q05": _round(q[0]), "q50": _round(q[1]), "q95": _round(q[2])}


def _round(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.round(np.asarray(x, dtype=np.float64), 7)]


def _mean_metrics(p: PassSummary, bars_per_year: float) -> dict[str, float]:
    rows = [p.metrics(i, bars_per_year=bars_per_year) for i in range(p.n_passes)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def trial_sharpe_variance(seed_sharpes: np.ndarray, n_bars: int) -> float:
    """Variance ``V`` of the trials' per-bar Sharpe ratios for the Deflated Sharpe Ratio.

    The across-seed variance of the deterministic passes' per-bar Sharpe ratios (seeds are
    trials of the same configuration), but never below ``1 / (n_bars - 1)``, the sampling
    variance of a per-bar Sharpe estimate under the null of no skill (Lo 2002, "The
    Statistics of Sharpe Ratios", FAJ 58(4)); with one seed that floor is used alone.
    Bailey & Lopez de Prado (2014) estimate ``V`` across the trials they deflate for.
    """
    floor = 1.0 / max(n_bars - 1, 1)
    finite = seed_sharpes[np.isfinite(seed_sharpes)]
    if finite.size < 2:
        return floor
    return max(float(np.var(finite, ddof=1)), floor)


def random_null_match(seeds: list[SeedPasses]) -> dict[str, Any]:
    """What the random passes match: mean exposure and turnover, policy vs random passes.

    From the streaming accumulators (per-pass exposure, turnover and costs), the same
    numbers :func:`evaluation.stats.exposure` / :func:`evaluation.stats.turnover` and the
    summed costs give on the full ``[K, N]`` arrays (up to summation order).
    """
    pol = [s.stochastic for s in seeds]
    rnd = [s.random for s in seeds]

    def mean_of(name: str, passes: list[PassSummary]) -> float:
        return float(np.mean(np.concatenate([getattr(p, name) for p in passes])))

    return {
        "design": (
            "each random pass holds the policy pass's exposure |p_t| bar by bar with the "
            "pass's own direction pattern shifted to a random time (and flipped at random): "
            "same exposure, same number of direction changes, random timing"
        ),
        "policy_exposure": mean_of("exposures", pol),
        "random_exposure": mean_of("exposures", rnd),
        "policy_turnover": mean_of("turnovers", pol),
        "random_turnover": mean_of("turnovers", rnd),
        "policy_costs": float(np.mean([p.cost_totals.mean() for p in pol])),
        "random_costs": float(np.mean([p.cost_totals.mean() for p in rnd])),
    }


def summarise(result: BacktestResult) -> dict[str, Any]:
    """Every number of a backtest as a JSON-ready dict: bands, pass totals, metrics, verdict.

    Per-bar series (times, price, bands, lines, sigma) are given at the plotting bars
    (:data:`evaluation.streaming.PLOT_POINTS`: every bar of a shorter test period).
    """
    seeds = result.seeds
    plot = result.buy_and_hold.plot_bars
    policy_cum = np.concatenate([s.stochastic.plot_cum for s in seeds])
    random_cum = np.concatenate([s.random.plot_cum for s in seeds])
    bpy = result.settings.get("bars_per_year") or stats.infer_bars_per_year(result.times)
    n_bars = result.buy_and_hold.n_bars
    seed_sharpes = np.array([s.deterministic.sharpes()[0] for s in seeds])
    # the trials behind the selection: configs x checkpoints x seeds (recorded by the runs),
    # at least the seeds judged here; the K passes of one policy are not trials
    n_trials = max(int(result.settings.get("n_trials") or 1), len(seeds))
    trials = (n_trials, trial_sharpe_variance(seed_sharpes, n_bars))
    rows = []
    for s in seeds:
        rows.append(
            {
                "name": f"{s.name} (deterministic)",
                "metrics": s.deterministic.metrics(0, bars_per_year=bpy, trials=trials),
            }
        )
        rows.append(
            {
                "name": f"{s.name} (mean of {s.stochastic.n_passes} passes)",
                "metrics": _mean_metrics(s.stochastic, bpy),
            }
        )
        rows.append({"name": f"{s.name} random (mean)", "metrics": _mean_metrics(s.random, bpy)})
    rows.append({"name": "buy-and-hold", "metrics": result.buy_and_hold.metrics(0, None, bpy)})
    rows.append({"name": "flat", "metrics": result.flat.metrics(0, None, bpy)})
    seed_means = np.array([s.stochastic.totals.mean() for s in seeds])
    random_totals = np.concatenate([s.random.totals for s in seeds])
    if len(seeds) > 1:
        iqm, lo, hi = stats.iqm_ci(seed_means, rng=0)
    else:
        iqm, lo, hi = float(seed_means[0]), np.nan, np.nan
    across = {
        "iqm": iqm,
        "iqm_ci": [float(lo), float(hi)],
        "poi_vs_random": stats.probability_of_improvement(
            np.concatenate([s.stochastic.totals for s in seeds]), random_totals
        ),
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": result.settings,
        "policies": [s.name for s in seeds],
        "verdict": result.verdict.to_dict(),
        "series": {
            "times": [t.isoformat() for t in result.times[plot]],
            "price": _round(result.price[plot]),
            "buy_and_hold": _round(result.buy_and_hold.plot_cum[0]),
            "policy_band": _band(policy_cum),
            "random_band": _band(random_cum),
            "deterministic": [_round(s.deterministic.plot_cum[0]) for s in seeds],
            "sigma": [
                _round(s.stochastic.sigma_mean)
                if s.stochastic.sigma_mean is not None
                and np.isfinite(s.stochastic.sigma_mean).any()
                else []
                for s in seeds
            ],
        },
        "pass_totals": {
            "policy": [_round(s.stochastic.totals) for s in seeds],
            "random": [_round(s.random.totals) for s in seeds],
        },
        "metrics": {
            "rows": rows,
            "across_seeds": across,
            "dsr_trials": {"n_trials": trials[0], "sr_variance": trials[1]},
        },
        "random_null": random_null_match(seeds),
    }


def to_json(summary: dict[str, Any]) -> str:
    """The ``backtest.json`` text of a summary (NaN/inf become null)."""
    return json.dumps(_finite(summary), indent=1)


def check_document(doc: Any, source: str) -> dict[str, Any]:
    """``doc`` if it is a backtest summary (``format`` = :data:`FORMAT`), else a clear error.

    Raises:
        ValueError: naming ``source`` (e.g. the file it was read from).
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source}: not an mlkv-trader backtest.json (format != {FORMAT!r}).")
    return doc


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
