"""`mlkv-trader train`: train an agent from a YAML experiment."""

from __future__ import annotations

import argparse
import sys

_EXAMPLE = """examples:
  mlkv-trader train --config experiments/configs/ar1_ppo.yaml
  mlkv-trader train --config experiments/configs/eurusd_ppo.yaml --set seed=3 --set ppo.n_epochs=8
  mlkv-trader train --resume runs/ar1_ppo/20261123-101500-s0
  mlkv-trader train --config experiments/configs/ar1_ppo.yaml --seeds 0-9 --workers 2
  mlkv-trader train --config ar1.yaml --seeds 0-99 --backend ray --ray-address auto
  mlkv-trader train --sweep runs/ar1_ppo/sweep-20261123-101500   # resume: skip done seeds
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
    add_backend_arguments(p, what="seed")
    p.set_defaults(func=run)


def add_backend_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The many-seeds options shared by `train` and `backtest` (see docs/scaling.md)."""
    g = p.add_argument_group("many seeds (docs/scaling.md)")
    if what == "seed":
        g.add_argument(
            "--seeds",
            metavar="SPEC",
            help="train a sweep, one run per seed: 0-9, 0,2,5 or 0-3,7 (replaces the "
            "config's seed); writes runs/<name>/sweep-<timestamp>/ with sweep.json",
        )
        g.add_argument(
            "--sweep",
            metavar="DIR",
            help="resume a sweep: skip done seeds, continue the others from their last "
            "checkpoint (with --seeds: also add those seeds)",
        )
    g.add_argument(
        "--backend",
        choices=("local", "ray"),
        default=None,
        help=f"where each {what} runs: local processes (no Ray needed) or Ray tasks; default: "
        + ("local" if what == "seed" else "in this process, one after another"),
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"{what}s at once (default: CPU cores / --cpus-per-{what}; with Ray: what the "
        "cluster holds)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster (ray://host:10001, host:6379 or auto) instead of "
        "starting a local Ray",
    )
    g.add_argument(
        f"--cpus-per-{what}",
        dest="cpus_per_task",
        type=int,
        default=1,
        metavar="N",
        help=f"CPU cores (and torch threads) per {what} (default 1)",
    )
    if what == "seed":
        g.add_argument(
            "--gpus-per-seed",
            dest="gpus_per_task",
            type=float,
            default=None,
            metavar="G",
            help="GPUs per seed (default: 1 when the config's device is cuda, else 0; "
            "0.5 packs two seeds on a GPU)",
        )
    g.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help=f"times a failed {what} is tried again (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    from experiments.config import load_config
    from experiments.errors import UsageError
    from experiments.progress import console
    from experiments.train import train

    if args.seeds is not None or args.sweep is not None:
        return _sweep(args)
    if args.backend or args.workers or args.ray_address:
        raise UsageError("--backend/--workers/--ray-address run sweeps: add --seeds (or --sweep).")
    if args.resume and (args.config or args.overrides):
        raise UsageError("--resume uses the run's own config.yaml; drop --config/--set.")
    if not args.resume and not args.config:
        raise UsageError("give --config FILE (or --resume RUN_DIR); see --help.")
    config = None if args.resume else load_config(args.config, args.overrides)
    run_dir = train(
        config,
        runs_root=args.runs_root,
        resume=args.resume,
        argv=sys.argv,
        show_progress=not args.no_progress,
    )
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """`train --seeds` / `train --sweep`: build or reopen the sweep, run it, report."""
    from rich.markup import escape

    from experiments.config import load_config
    from experiments.errors import UsageError
    from experiments.progress import console
    from experiments.sweeps.backends import make_backend
    from experiments.sweeps.manifest import Sweep, parse_seeds
    from experiments.sweeps.train import print_sweep, run_sweep, seed_resources

    if args.resume:
        raise UsageError("--resume continues one run; to resume a sweep use --sweep DIR.")
    if args.sweep and (args.config or args.overrides):
        raise UsageError("--sweep uses the sweep's own config.yaml; drop --config/--set.")
    if not args.sweep and not args.config:
        raise UsageError("--seeds needs --config FILE (or --sweep DIR to resume); see --help.")
    if args.retries < 0:
        raise UsageError("--retries must be >= 0.")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    sweep = Sweep.open(args.sweep) if args.sweep else None
    config = sweep.base_config() if sweep else load_config(args.config, args.overrides)
    backend = make_backend(
        args.backend or "local",
        workers=args.workers,
        address=args.ray_address,
        resources=seed_resources(config, args.cpus_per_task, args.gpus_per_task),
    )
    try:
        sweep = sweep or Sweep.create(config, seeds, args.runs_root)
        result = run_sweep(
            sweep,
            backend,
            add=seeds,
            attempts=1 + args.retries,
            argv=sys.argv,
            show_progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        if sweep is not None:
            console.print(
                f"interrupted; running seeds saved a checkpoint. Resume with: "
                f"mlkv-trader train --sweep {escape(str(sweep.path))}"
            )
        return 130
    finally:
        backend.close()
    print_sweep(sweep)
    where = escape(str(sweep.path))
    console.print(f"sweep directory: [bold]{where}[/bold] (manifest: sweep.json)")
    if result.skipped:
        console.print(f"skipped (done earlier): seeds {', '.join(map(str, result.skipped))}")
    if result.failed:
        console.print(
            f"[red]failed seeds: {', '.join(map(str, result.failed))}[/red] (errors in "
            f"sweep.json). Fix the cause and resume with: mlkv-trader train --sweep {where}"
        )
        return 1
    return 0
