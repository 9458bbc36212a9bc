"""The `mlkv-trader` command line: a thin layer that parses, builds configs and calls the library.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` (``args -> exit code``): parse, build typed requests, call
one library function, print. Errors take one path: a command raises, and :func:`main`
prints a user error (:data:`experiments.errors.USER_ERRORS`: its message says what to fix)
as one line ``mlkv-trader CMD: error: ...`` (a message over several lines is joined) and
exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from experiments.errors import USER_ERRORS

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
        importlib.import_module(f"experiments.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as err:
        if os.environ.get("MLKV_TRADER_TRACEBACK"):
            raise
        print(f"mlkv-trader {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """An error's message on one line (a YAML or torch message runs over several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
