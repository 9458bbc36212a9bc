"""`mlkv-trader compare`: probability of improvement and IQM CIs between two backtests."""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLE = """example:
  mlkv-trader compare runs/mlkv/backtest.json runs/mha/backtest.json
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.backtesting import compare_backtests

    compare_backtests(args.a, args.b)
    return 0
