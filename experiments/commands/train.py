"""`mlkv-trader train`: train an agent from a YAML experiment."""

from __future__ import annotations

import argparse
import sys

_EXAMPLE = """examples:
  mlkv-trader train --config experiments/configs/ar1_ppo.yaml
  mlkv-trader train --config experiments/configs/eurusd_ppo.yaml --set seed=3 --set ppo.n_epochs=8
  mlkv-trader train --resume runs/ar1_ppo/20261123-101500-s0
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an agent from a YAML config",
        description="Train the MLKV actor-critic. Writes runs/<name>/<timestamp>-s<seed>/ with "
        "the resolved config, command, versions, progress.csv, TensorBoard events, checkpoints, "
        "best.zip and final.zip. Ctrl-C saves a checkpoint; --resume continues from it.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML experiment (see experiments/configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set env.window=64 (repeatable)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--runs-root", default="runs", help="parent folder of run directories")
    p.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.config import load_config
    from experiments.progress import console
    from experiments.train import train

    if args.resume and (args.config or args.overrides):
        console.print("[red]--resume uses the run's own config.yaml; drop --config/--set.")
        return 2
    if not args.resume and not args.config:
        console.print("[red]give --config FILE (or --resume RUN_DIR); see --help.")
        return 2
    config = None if args.resume else load_config(args.config, args.overrides)
    try:
        run_dir = train(
            config,
            runs_root=args.runs_root,
            resume=args.resume,
            argv=sys.argv,
            show_progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        return 130
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    return 0
