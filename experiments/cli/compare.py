"""`mlkv-trader compare`: probability of improvement and IQM CIs between two backtests."""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLE = """examples:
  mlkv-trader compare runs/mlkv/backtest.json runs/mha/backtest.json
  mlkv-trader compare runs/a/backtest.json runs/b/backtest.json --comparisons 6
      (one of the 6 pairs among 4 configurations: judged at 0.05/6)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two sets of runs (IQM CIs, probability of improvement)",
        description="Compare the per-seed mean pass log returns of two backtests: IQM with "
        "95%% stratified-bootstrap CIs and the probability that A improves on B "
        "(Agarwal et al. 2021).",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path, help="backtest.json of set A")
    p.add_argument("b", type=Path, help="backtest.json of set B")
    p.add_argument(
        "--comparisons",
        type=int,
        default=1,
        help="how many comparisons were made in all (printed with its Bonferroni level)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.backtesting import compare_backtests

    compare_backtests(args.a, args.b, args.comparisons)
    return 0
