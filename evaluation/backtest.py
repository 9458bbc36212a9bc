"""Backtest one or many trained policies across K stochastic passes, judge, and summarise.

For each policy (one per training seed) :func:`backtest` runs, over the same test bars and
costs: K stochastic passes (sampled actions), one deterministic pass (the mean), and K
**exposure-matched random** passes (the policy's own |position| path with a random sign at
every bar: same exposure, random direction and timing, no skill); plus
flat and buy-and-hold once. All passes go through the batched env in lockstep; the MLKV
policy encodes the test series once and shares it across its K passes. The passes are not
stored: :mod:`evaluation.streaming` folds each chunk of bars into every statistic the
summary and the verdict (:func:`evaluation.verdict.judge_inputs`) need, so memory does not
grow with passes x bars; ``keep_ledgers=True`` also keeps the per-bar arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from envs import EnvConfig
from envs.kernels import M_CLOSE, MarketArrays

from . import stats
from .passes import CHUNK, PassResult, ScheduledRun, iter_policy_passes, walk_times
from .streaming import PassAccumulator, PassSummary, RandomSigns
from .verdict import Verdict, VerdictConfig, VerdictInputs, judge_inputs

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
    """Random-direction copies of position paths: ``|p_t| * eps_t``, ``eps_t`` iid +-1.

    Same exposure profile as the policy (and so the same scale of per-bar risk), random
    direction and timing: the null the verdict's dispersion test was calibrated against
    (``experiments/studies/calibrate_verdict.py``).

    Args:
        positions: ``[K, N]`` positions of K passes.
        rng: the generator of the random signs.

    Returns:
        ``[K, N]`` target positions for the random passes.
    """
    return np.abs(positions) * rng.choice(np.array([-1.0, 1.0]), size=positions.shape)


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
            ``O(passes x (n_windows + plot points) + bars)`` per policy.
    """
    policies = list(policies) if isinstance(policies, (list, tuple)) else [policies]
    if not policies:
        raise ValueError("backtest needs at least one policy.")
    names = names or [f"policy-{i}" for i in range(len(policies))]
    if len(names) != len(policies):
        raise ValueError(f"got {len(names)} names for {len(policies)} policies.")
    n_windows = (verdict_config or VerdictConfig()).n_windows
    seeds = []
    for i, (name, policy) in enumerate(zip(names, policies, strict=True)):
        seeds.append(
            policy_passes(
                policy, candles, index=i, passes=passes, env_config=env_config, seed=seed,
                name=name, n_windows=n_windows, keep_ledgers=keep_ledgers,
            )
        )
        if on_policy_done is not None:
            on_policy_done(i, name)
    return combine(
        seeds, candles, env_config=env_config, seed=seed, verdict_config=verdict_config,
        keep_ledgers=keep_ledgers,
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
    whether the set runs in one process or as one task per policy. The three groups walk the
    test period together, a chunk of bars at a time: the random passes follow the policy's
    own positions with random signs, so nothing of size ``K x n_bars`` is kept unless
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
    if int(passes) != passes or passes < 2:
        raise ValueError(
            f"passes must be an integer >= 2 (K passes make a dispersion), got {passes}."
        )
    n_windows = VerdictConfig().n_windows if n_windows is None else int(n_windows)
    policy = getattr(policy, "policy", policy)  # an SB3 algorithm -> its policy
    env = _test_env(env_config)
    candles = _market(candles)  # features once, shared by every walk below
    times = walk_times(candles, env)
    n_steps = len(times)
    lo, hi, _ = (pass_slice or slice(0, passes)).indices(passes)
    group = np.arange(lo, hi)
    with_det = hi == passes
    sto = PassAccumulator(group.size, times, n_windows, sigma=True, keep_ledgers=keep_ledgers)
    det = PassAccumulator(1, times, n_windows, sigma=True, keep_ledgers=keep_ledgers)
    rnd = PassAccumulator(group.size, times, n_windows, keep_ledgers=keep_ledgers)
    signs = RandomSigns(np.random.default_rng([seed, index]), passes, n_steps)
    random_run = ScheduledRun(candles, env, group.size, seed)
    # K stochastic passes and the deterministic one (last row) in one lockstep run
    chunks = iter_policy_passes(
        policy,
        candles,
        env,
        n_passes=passes + 1,
        deterministic=np.arange(passes + 1) == passes,
        seed=seed + 7919 * (index + 1),
        chunk=CHUNK,
    )
    for chunk in chunks:
        for first in range(0, chunk.positions.shape[1], CHUNK):  # generic: one big chunk
            cols = slice(first, first + CHUNK)
            t0 = chunk.first + first
            pos, ret = chunk.positions[:, cols], chunk.log_returns[:, cols]
            cost, mean, sigma = chunk.costs[:, cols], chunk.mean[:, cols], chunk.sigma[:, cols]
            sto.update(ret[group], pos[group], cost[group], mean[group], sigma[group])
            if with_det:
                det.update(ret[-1:], pos[-1:], cost[-1:], mean[-1:], sigma[-1:])
            # exposure_matched_random(positions, rng), a chunk of bars at a time
            signs_chunk = signs.take(t0, t0 + pos.shape[1], group)
            r = random_run.step(np.abs(pos[group]) * signs_chunk)
            rnd.update(r.log_returns, r.positions, r.costs)
    deterministic = det.finish() if with_det else None
    return SeedPasses(name or f"policy-{index}", sto.finish(), deterministic, rnd.finish())


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
) -> BacktestResult:
    """Buy-and-hold and flat on the same bars, and one verdict over all policies' passes."""
    cfg = verdict_config or VerdictConfig()
    n_windows = cfg.n_windows
    market = _market(candles)
    buy_and_hold = _scheduled(np.ones((1, 1)), market, env_config, seed, n_windows, keep_ledgers)
    flat = _scheduled(np.zeros((1, 1)), market, env_config, seed, n_windows, keep_ledgers)
    n_steps = buy_and_hold.n_bars
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
    verdict = judge_inputs(inputs, cfg)
    price = market.market[-n_steps:, M_CLOSE].copy()
    settings = {
        "passes": seeds[0].stochastic.n_passes,
        "seed": seed,
        "env": _test_env(env_config).to_dict(),
        "n_bars": n_steps,
        "policies": [s.name for s in seeds],
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


def summarise(result: BacktestResult) -> dict[str, Any]:
    """Every number of a backtest as a JSON-ready dict: bands, pass totals, metrics, verdict.

    Per-bar series (times, price, bands, lines, sigma) are given at the plotting bars
    (:data:`evaluation.streaming.PLOT_POINTS`: every bar of a shorter test period).
    """
    seeds = result.seeds
    bars_per_year = stats.infer_bars_per_year(result.times)
    plot = result.buy_and_hold.plot_bars
    policy_cum = np.concatenate([s.stochastic.plot_cum for s in seeds])
    random_cum = np.concatenate([s.random.plot_cum for s in seeds])
    trial_sharpes = np.concatenate([s.stochastic.sharpes() for s in seeds])
    rows = []
    for s in seeds:
        rows.append(
            {
                "name": f"{s.name} (deterministic)",
                "metrics": s.deterministic.metrics(0, trial_sharpes, bars_per_year),
            }
        )
        rows.append(
            {
                "name": f"{s.name} (mean of {s.stochastic.n_passes} passes)",
                "metrics": _mean_metrics(s.stochastic, bars_per_year),
            }
        )
        rows.append(
            {"name": f"{s.name} random (mean)", "metrics": _mean_metrics(s.random, bars_per_year)}
        )
    rows.append(
        {"name": "buy-and-hold", "metrics": result.buy_and_hold.metrics(0, None, bars_per_year)}
    )
    rows.append({"name": "flat", "metrics": result.flat.metrics(0, None, bars_per_year)})
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
        "metrics": {"rows": rows, "across_seeds": across},
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
