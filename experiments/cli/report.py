"""`mlkv-trader report`: regenerate report.html from backtest.json."""

from __future__ import annotations

import argparse
from pathlib import Path

_EXAMPLE = """example:
  mlkv-trader report runs/ar1_ppo/backtest.json          # writes runs/ar1_ppo/report.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="regenerate the HTML report from a backtest.json",
        description="Render the self-contained HTML variance report from backtest.json.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("backtest", type=Path, help="a backtest.json")
    p.add_argument("--out", type=Path, default=None, help="HTML path (default: beside the JSON)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from experiments.progress import console
    from experiments.runs import read_json, write_report

    summary = read_json(args.backtest)
    out = args.out or args.backtest.with_name("report.html")
    try:
        out = write_report(summary, out)
    except (KeyError, IndexError, TypeError, ValueError) as err:  # valid JSON, damaged inside
        raise ValueError(
            f"{args.backtest}: damaged backtest.json ({type(err).__name__}: {err}); nothing "
            "written. Re-run `mlkv-trader backtest` to write it again."
        ) from err
    console.print(f"report: [bold]{out}[/bold]")
    return 0
