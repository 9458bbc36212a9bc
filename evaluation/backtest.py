"""Backtest one or many trained policies across K stochastic passes, judge, and summarise.

For each policy (one per training seed) :func:`backtest` runs, over the same test bars and
costs: K stochastic passes (sampled actions), one deterministic pass (the mean), and K
**exposure-matched random** passes (the policy's own |position| path with its own
direction pattern shifted to a random time: same exposure and turnover, random timing, no
skill; :func:`exposure_matched_random`); plus
flat and buy-and-hold once. All passes go through the batched env in lockstep; the MLKV
policy encodes the test series once and shares it across its K passes. The verdict comes
from :func:`evaluation.verdict.judge` on those arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from envs import EnvConfig

from . import stats
from .passes import PassResult, ScheduledActions, run_policy_passes
from .verdict import Sample, Verdict, VerdictConfig, judge

FORMAT = "mlkv-trader-backtest"
VERSION = 1


@dataclass(frozen=True)
class SeedPasses:
    """Everything run for one policy: K stochastic, 1 deterministic, K random passes."""

    name: str  # run directory or a label
    stochastic: PassResult  # [K, N]
    deterministic: PassResult  # [1, N]
    random: PassResult  # [K, N] exposure-matched random passes


@dataclass(frozen=True)
class BacktestResult:
    """All passes of all policies over one test period, the baselines and the verdict."""

    seeds: list[SeedPasses]
    buy_and_hold: PassResult  # [1, N]
    flat: PassResult  # [1, N]
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
    shift = rng.integers(1, n, size=k) if n > 1 else np.zeros(k, dtype=np.int64)
    flip = rng.choice(np.array([-1.0, 1.0]), size=k)
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
    seeds = []
    for i, (name, policy) in enumerate(zip(names, policies, strict=True)):
        seeds.append(
            policy_passes(
                policy, candles, index=i, passes=passes, env_config=env_config, seed=seed,
                name=name,
            )
        )
        if on_policy_done is not None:
            on_policy_done(i, name)
    return combine(
        seeds, candles, env_config=env_config, seed=seed, verdict_config=verdict_config,
        sample=sample, bars_per_year=bars_per_year, period=period,
    )


def _scheduled(
    actions: np.ndarray, candles: pd.DataFrame, env_config: EnvConfig, seed: int
) -> PassResult:
    """Passes that follow fixed target positions, ``[n_passes, n_bars]`` (or broadcast)."""
    return run_policy_passes(
        ScheduledActions(actions),
        candles,
        _test_env(env_config),
        n_passes=actions.shape[0],
        deterministic=True,
        seed=seed,
    )


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
) -> SeedPasses:
    """One policy's K stochastic passes, its deterministic pass and K random passes.

    Seeded by ``(seed, index)`` alone, so policy ``index`` of a set gets the same passes
    whether the set runs in one process or as one task per policy.

    Args:
        policy: as in :func:`backtest`.
        candles: the test period.
        index: the policy's position in its set.
        passes: K >= 2.
        env_config: costs and window of the env; ``mode`` is forced to ``"test"``.
        seed: the backtest's seed.
        name: its label (default ``policy-<index>``).
    """
    if int(passes) != passes or passes < 2:
        raise ValueError(
            f"passes must be an integer >= 2 (K passes make a dispersion), got {passes}."
        )
    policy = getattr(policy, "policy", policy)  # an SB3 algorithm -> its policy
    # K stochastic passes and the deterministic one (last row) in one lockstep run
    both = run_policy_passes(
        policy,
        candles,
        _test_env(env_config),
        n_passes=passes + 1,
        deterministic=np.arange(passes + 1) == passes,
        seed=seed + 7919 * (index + 1),
    )
    sto, det = both.rows(slice(0, passes)), both.rows(slice(passes, None))
    rng = np.random.default_rng([seed, index])
    rnd = _scheduled(exposure_matched_random(sto.positions, rng), candles, env_config, seed)
    return SeedPasses(name or f"policy-{index}", sto, det, rnd)


def combine(
    seeds: list[SeedPasses],
    candles: pd.DataFrame,
    *,
    env_config: EnvConfig,
    seed: int = 0,
    verdict_config: VerdictConfig | None = None,
    sample: Sample | None = None,
    bars_per_year: float | None = None,
    period: int | None = None,
) -> BacktestResult:
    """Buy-and-hold and flat on the same bars, and one verdict over all policies' passes.

    ``sample``, ``bars_per_year`` and ``period`` as in :func:`backtest`.
    """
    buy_and_hold = _scheduled(np.ones((1, 1)), candles, env_config, seed)  # always +1
    flat = _scheduled(np.zeros((1, 1)), candles, env_config, seed)
    n_steps = buy_and_hold.log_returns.shape[1]
    times = buy_and_hold.times
    if period is None:
        period = min(stats.seasonal_period(times), max(1, n_steps // 2))
    if bars_per_year is None:
        bars_per_year = stats.infer_bars_per_year(times)
    smp = sample if sample is not None else Sample()
    verdict = judge(
        np.stack([s.stochastic.log_returns for s in seeds]),
        np.stack([s.random.log_returns for s in seeds]),
        buy_and_hold.log_returns[0],
        np.stack([s.stochastic.positions for s in seeds]),
        verdict_config,
        period=period,
        sample=smp,
    )
    price = candles["close"].to_numpy(dtype=np.float64)[-n_steps:]
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


def _metrics(
    p: PassResult, i: int, bars_per_year: float, trials: tuple[int, float] | None = None
) -> dict[str, float]:
    m = stats.pass_metrics(
        p.log_returns[i], p.positions[i], p.costs[i], bars_per_year=bars_per_year
    )
    if trials is not None:  # DSR against the real trials, not the K passes
        n_trials, sr_var = trials
        m["dsr"] = stats.deflated_sharpe_ratio(
            m["sharpe_per_bar"], int(m["n_bars"]), n_trials=n_trials, sr_variance=sr_var,
            skew=m["skew"], kurtosis=m["kurtosis"],
        )
    return m


def _mean_metrics(p: PassResult, bars_per_year: float) -> dict[str, float]:
    rows = [_metrics(p, i, bars_per_year) for i in range(p.n_passes)]
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
    """What the random passes match: mean exposure and turnover, policy vs random passes."""
    pol = [s.stochastic for s in seeds]
    rnd = [s.random for s in seeds]

    def mean_of(fn: Any, passes: list[PassResult]) -> float:
        return float(np.mean([fn(p.positions[i]) for p in passes for i in range(p.n_passes)]))

    return {
        "design": (
            "each random pass holds the policy pass's exposure |p_t| bar by bar with the "
            "pass's own direction pattern shifted to a random time (and flipped at random): "
            "same exposure, same number of direction changes, random timing"
        ),
        "policy_exposure": mean_of(stats.exposure, pol),
        "random_exposure": mean_of(stats.exposure, rnd),
        "policy_turnover": mean_of(stats.turnover, pol),
        "random_turnover": mean_of(stats.turnover, rnd),
        "policy_costs": float(np.mean([p.costs.sum(axis=1).mean() for p in pol])),
        "random_costs": float(np.mean([p.costs.sum(axis=1).mean() for p in rnd])),
    }


def summarise(result: BacktestResult) -> dict[str, Any]:
    """Every number of a backtest as a JSON-ready dict: bands, pass totals, metrics, verdict."""
    seeds = result.seeds
    policy_cum = np.concatenate([np.cumsum(s.stochastic.log_returns, axis=1) for s in seeds])
    random_cum = np.concatenate([np.cumsum(s.random.log_returns, axis=1) for s in seeds])
    bpy = result.settings.get("bars_per_year") or stats.infer_bars_per_year(result.times)
    n_bars = result.buy_and_hold.log_returns.shape[1]
    seed_sharpes = np.array(
        [stats.return_moments(s.deterministic.log_returns[0])[0] for s in seeds]
    )
    # the trials behind the selection: configs x checkpoints x seeds (recorded by the runs),
    # at least the seeds judged here; the K passes of one policy are not trials
    n_trials = max(int(result.settings.get("n_trials") or 1), len(seeds))
    trials = (n_trials, trial_sharpe_variance(seed_sharpes, n_bars))
    rows = []
    for s in seeds:
        rows.append(
            {
                "name": f"{s.name} (deterministic)",
                "metrics": _metrics(s.deterministic, 0, bpy, trials),
            }
        )
        rows.append(
            {
                "name": f"{s.name} (mean of {s.stochastic.n_passes} passes)",
                "metrics": _mean_metrics(s.stochastic, bpy),
            }
        )
        rows.append({"name": f"{s.name} random (mean)", "metrics": _mean_metrics(s.random, bpy)})
    rows.append({"name": "buy-and-hold", "metrics": _metrics(result.buy_and_hold, 0, bpy)})
    rows.append({"name": "flat", "metrics": _metrics(result.flat, 0, bpy)})
    seed_means = np.array([s.stochastic.log_returns.sum(axis=1).mean() for s in seeds])
    random_totals = np.concatenate([s.random.log_returns.sum(axis=1) for s in seeds])
    if len(seeds) > 1:
        iqm, lo, hi = stats.iqm_ci(seed_means, rng=0)
    else:
        iqm, lo, hi = float(seed_means[0]), np.nan, np.nan
    across = {
        "iqm": iqm,
        "iqm_ci": [float(lo), float(hi)],
        "poi_vs_random": stats.probability_of_improvement(
            np.concatenate([s.stochastic.log_returns.sum(axis=1) for s in seeds]), random_totals
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
            "times": [t.isoformat() for t in result.times],
            "price": _round(result.price),
            "buy_and_hold": _round(np.cumsum(result.buy_and_hold.log_returns[0])),
            "policy_band": _band(policy_cum),
            "random_band": _band(random_cum),
            "deterministic": [_round(np.cumsum(s.deterministic.log_returns[0])) for s in seeds],
            "sigma": [
                _round(np.nanmean(s.stochastic.sigma, axis=0))
                if np.isfinite(s.stochastic.sigma).any()
                else []
                for s in seeds
            ],
        },
        "pass_totals": {
            "policy": [_round(s.stochastic.log_returns.sum(axis=1)) for s in seeds],
            "random": [_round(s.random.log_returns.sum(axis=1)) for s in seeds],
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
