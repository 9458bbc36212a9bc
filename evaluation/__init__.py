"""Evaluation: did a stochastic policy learn, or does it still act at random?

Arrays and policies in, results out: no run directories, no files, no CLI (those live in
``experiments``). The public API::

    from evaluation import backtest, judge, VerdictConfig

    result = backtest(policies, test_candles, passes=50, env_config=env_config, seed=0)
    result.verdict.label               # LEARNED / CONSISTENT-BUT-NO-EDGE / RANDOM / INCONCLUSIVE
                                       # (IN-SAMPLE instead of LEARNED off an untouched test
                                       # split: backtest(..., sample=Sample(split=...)))
    summary = result.summary()         # every number of backtest.json
    html = render_report(summary)      # the self-contained HTML report

    verdict = judge(policy_returns, random_returns, market_returns, policy_positions,
                    VerdictConfig(alpha=0.05))

Modules: ``passes`` (K passes of a policy in lockstep through the batched env),
``backtest`` (policy + baselines + random passes -> verdict and summary), ``streaming``
(the statistics of K passes folded in chunk by chunk of bars: no ``[K, n_bars]`` arrays
unless ``keep_ledgers``), ``stats``
(per-pass metrics, PSR/DSR/MinTRL, IQM and probability of improvement), ``bootstrap`` (block
bootstraps), ``verdict`` (the calibrated verdict, see ``docs/evaluator.md``) and ``report``
(HTML rendering).
"""

from .backtest import (
    BacktestResult,
    SeedPasses,
    backtest,
    combine,
    merge_pass_groups,
    policy_passes,
)
from .bootstrap import block_bootstrap_means, default_block_length
from .passes import PassResult, run_policy_passes
from .report import render_report
from .stats import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    infer_bars_per_year,
    iqm,
    iqm_ci,
    min_track_record_length,
    pass_metrics,
    probabilistic_sharpe_ratio,
    probability_of_improvement,
    probability_of_improvement_ci,
    seasonal_period,
    sharpe_ratio,
)
from .streaming import PassAccumulator, PassSummary
from .verdict import (
    LABELS,
    Sample,
    Verdict,
    VerdictConfig,
    VerdictInputs,
    judge,
    judge_inputs,
    relabel,
)

__all__ = [
    "LABELS",
    "BacktestResult",
    "PassAccumulator",
    "PassResult",
    "PassSummary",
    "Sample",
    "SeedPasses",
    "Verdict",
    "VerdictConfig",
    "VerdictInputs",
    "backtest",
    "block_bootstrap_means",
    "combine",
    "default_block_length",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "infer_bars_per_year",
    "iqm",
    "iqm_ci",
    "judge",
    "judge_inputs",
    "merge_pass_groups",
    "min_track_record_length",
    "pass_metrics",
    "policy_passes",
    "probabilistic_sharpe_ratio",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "relabel",
    "render_report",
    "run_policy_passes",
    "seasonal_period",
    "sharpe_ratio",
]

