"""`mlkv-trader backtest`: K stochastic passes per run + baselines, verdict, JSON + HTML."""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLE = """examples:
  mlkv-trader backtest runs/ar1_ppo/*/ --passes 50
  mlkv-trader backtest runs/eurusd_ppo/20261123-101500-s0 --passes 20 --split validation
  mlkv-trader backtest RUN_DIR --data prices.csv --passes 50 --out reports/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backtest",
        help="backtest trained runs across K stochastic passes and judge them",
        description="Run each policy K times over the same test bars (sampled actions), plus a "
        "deterministic pass, exposure-matched random passes, flat and buy-and-hold; print the "
        "verdict and write backtest.json and report.html.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", type=Path, help="run directories (one per training seed)")
    p.add_argument("--passes", type=int, default=50, help="stochastic passes K per run (>= 2)")
    p.add_argument(
        "--data",
        default=None,
        help="candles to test on: embedded name or file (default: the first run's own data)",
    )
    p.add_argument(
        "--split",
        choices=("test", "validation", "all"),
        default="test",
        help="part of the data to test on (default test)",
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "final"),
        default="best",
        help="which checkpoint of each run",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled actions")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the run directory, or the runs' common parent)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.evaluation.cli import run_backtest

    return run_backtest(args)
