"""`mlkv-trader compare`: probability of improvement and IQM CIs between two backtests."""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLE = """examples:
  mlkv-trader compare runs/mlkv/backtest.json runs/mha/backtest.json
  mlkv-trader compare runs/*/backtest.json      (every pair; says how many comparisons)
  mlkv-trader compare runs/a/backtest.json runs/b/backtest.json --comparisons 6
      (this pair is one of 6 compared in all: simultaneous 1 - 0.05/6 CIs)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare sets of runs (IQM CIs, probability of improvement of each pair)",
        description="Compare the per-seed mean pass log returns of two or more backtests: IQM "
        "with 95%% stratified-bootstrap CIs and, for every pair, the probability that A "
        "improves on B (Agarwal et al. 2021) with a simultaneous (Bonferroni) CI; prints how "
        "many comparisons were made.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("backtests", nargs="+", type=Path, help="backtest.json of each set (>= 2)")
    p.add_argument(
        "--comparisons",
        type=int,
        default=None,
        help="comparisons made in all, when more than the pairs here (default: the pairs)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.backtesting import compare_backtests
    from experiments.errors import UsageError

    if len(args.backtests) < 2:
        raise UsageError("compare needs at least two backtest.json files.")
    compare_backtests(args.backtests, args.comparisons)
    return 0
