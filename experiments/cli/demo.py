"""`mlkv-trader demo`: train -> backtest -> report on the embedded EURUSD data."""

from __future__ import annotations

import argparse

_EXAMPLE = """examples:
  mlkv-trader demo                   # EURUSD H1, 3 seeds, 50 passes each (< 10 min on 2 cores)
  mlkv-trader demo --smoke           # the same code path in about a minute
  mlkv-trader demo --market ar1      # planted edge: the honest verdict is LEARNED
  mlkv-trader demo --market gbm      # random walk: must not be LEARNED
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train 3 seeds, backtest K passes each, write the variance report",
        description="The whole loop on the embedded EURUSD H1 data (or a synthetic market): "
        "train the MLKV PPO agent for 3 seeds, backtest each with K passes on the held-out test "
        "split, write backtest.json + report.html and print the verdict.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--market", choices=("eurusd", "ar1", "gbm"), default="eurusd")
    p.add_argument("--seeds", type=int, default=3, help="training seeds (default 3)")
    p.add_argument("--passes", type=int, default=50, help="stochastic passes K (default 50)")
    p.add_argument("--smoke", action="store_true", help="tiny budget, same code path (~1 min)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    run_demo(
        args.market,
        seeds=args.seeds,
        passes=args.passes,
        smoke=args.smoke,
        out=args.out,
        show_progress=not args.no_progress,
    )
    return 0
