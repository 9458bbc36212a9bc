"""`mlkv-trader backtest`: K stochastic passes per run + baselines, verdict, JSON + HTML."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli.train import add_backend_arguments

_EXAMPLE = """examples:
  mlkv-trader backtest runs/ar1_ppo/*/ --passes 50
  mlkv-trader backtest runs/eurusd_ppo/20261123-101500-s0 --passes 20 --split validation
      (in-sample: best.zip was chosen on the validation split; the verdict says IN-SAMPLE)
  mlkv-trader backtest runs/ar1_ppo/*/ --configs-tried 12   (after a search over 12 configs)
  mlkv-trader backtest RUN_DIR --data prices.csv --passes 50 --out reports/
  mlkv-trader backtest runs/ar1_ppo/sweep-20261123-101500 --seeds 0-4 --backend local
  mlkv-trader backtest runs/ar1_ppo/sweep-20261123-101500 --backend ray --ray-address auto
  mlkv-trader backtest RUN_DIR --data eurusd_m1_2023.csv --passes 100 --keep-ledgers
  mlkv-trader backtest runs/m1/*/ --backend local --workers 4 --pass-groups 4
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
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="run directories (one per training seed), or sweep directories (their done seeds)",
    )
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
        "--configs-tried",
        type=int,
        default=1,
        help="configurations tried before choosing these runs (multiplies the trials the "
        "Deflated Sharpe Ratio deflates for; default 1)",
    )
    p.add_argument(
        "--bars-per-year",
        type=float,
        default=None,
        help="annualisation (default: from the frequency of the whole dataset, e.g. ~6,200 "
        "for FX H1)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the run directory, or the runs' common parent)",
    )
    p.add_argument(
        "--keep-ledgers",
        action="store_true",
        help="also keep every pass's per-bar arrays and write ledgers.npz (memory ~50 bytes x "
        "passes x bars; by default only streaming statistics are kept)",
    )
    p.add_argument(
        "--pass-groups",
        type=int,
        default=1,
        metavar="G",
        help="with a backend: split each run into G tasks by passes (very long test periods)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of an in-process backtest (default 1: its steps are small "
        "batched ops, which a second thread slows down unless a core sits idle)",
    )
    p.add_argument("--no-progress", action="store_true", help="do not draw per-run progress")
    p.add_argument(
        "--seeds",
        metavar="SPEC",
        default=None,
        help="only the runs of these training seeds: 0-9, 0,2,5 or 0-3,7",
    )
    add_backend_arguments(p, what="run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """In-process by default; with --backend (or --workers), one task per run."""
    from experiments.backtesting import BacktestRequest, backtest_runs
    from experiments.errors import UsageError
    from experiments.sweeps.backends import Resources, make_backend
    from experiments.sweeps.manifest import expand_runs, parse_seeds

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}.")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    request = BacktestRequest(
        runs=tuple(expand_runs(args.runs, seeds)),
        passes=args.passes,
        data=args.data,
        split=args.split,
        checkpoint=args.checkpoint,
        seed=args.seed,
        out=args.out,
        keep_ledgers=args.keep_ledgers,
        pass_groups=args.pass_groups,
        configs_tried=args.configs_tried,
        bars_per_year=args.bars_per_year,
    )
    if args.backend is None and args.workers is None and args.ray_address is None:
        import torch

        torch.set_num_threads(args.threads)
        backtest_runs(request, show_progress=not args.no_progress)
        return 0
    if args.retries < 0:
        raise UsageError("--retries must be >= 0.")
    backend = make_backend(
        args.backend or "local",
        workers=args.workers,
        address=args.ray_address,
        resources=Resources(cpus=args.cpus_per_task),
    )
    try:
        outcome = backtest_runs(
            request, backend, attempts=1 + args.retries, show_progress=not args.no_progress
        )
    finally:
        backend.close()
    return 1 if outcome is None or outcome.failed else 0
