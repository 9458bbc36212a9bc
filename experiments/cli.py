"""The `mlkv-trader` command line: a thin layer that parses, builds configs and calls the library.

Each subcommand lives in its own module under `experiments/commands/` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
