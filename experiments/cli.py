"""The `mlkv-trader` command line: a thin layer that parses, builds configs and calls the library.

Each subcommand lives in its own module under `experiments/commands/` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Errors that are the user's to fix (bad config, data, paths; and training divergence,
#: ``experiments.train.TrainingDivergedError``): their messages say what is wrong and how to
#: fix it, so the CLI prints them without a traceback (MLKV_TRADER_TRACEBACK=1 shows one).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)

# Subcommand modules, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = ("demo", "train", "backtest", "report", "compare", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlkv-trader",
        description="RL trading agent on an MLKV transformer, with a multi-run evaluator.",
        epilog="Run `mlkv-trader COMMAND --help` for a command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"experiments.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        from experiments.train import TrainingDivergedError  # torch: imported on errors only

        if not isinstance(err, (*USER_ERRORS, TrainingDivergedError)):
            raise
        if os.environ.get("MLKV_TRADER_TRACEBACK"):
            raise
        print(f"mlkv-trader {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
