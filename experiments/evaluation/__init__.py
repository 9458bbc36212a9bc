"""Evaluation: statistics of backtest passes and the learned-or-random verdict.

``stats`` holds per-pass metrics, PSR/DSR/MinTRL and the across-seed aggregates (IQM,
probability of improvement); ``bootstrap`` the block bootstraps; ``verdict`` the
calibrated verdict (see ``docs/evaluator.md``). None of them imports torch.
"""

from .bootstrap import block_bootstrap_means, default_block_length
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
    sharpe_ratio,
)
from .verdict import LABELS, Verdict, VerdictConfig, judge, relabel

__all__ = [
    "LABELS",
    "Verdict",
    "VerdictConfig",
    "block_bootstrap_means",
    "default_block_length",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "infer_bars_per_year",
    "iqm",
    "iqm_ci",
    "judge",
    "min_track_record_length",
    "pass_metrics",
    "probabilistic_sharpe_ratio",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "relabel",
    "sharpe_ratio",
]
