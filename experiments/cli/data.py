"""`mlkv-trader data`: validate candle files and summarise them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data import datasets, find_defects, load_candles

_EXAMPLE = """examples:
  mlkv-trader data validate prices.csv.gz
  mlkv-trader data validate prices.csv --time-format '%d.%m.%Y %H:%M:%S.%f'
  mlkv-trader data info eurusd_h1          # an embedded dataset, by name
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="validate or summarise candle data",
        description="Validate or summarise candle data (CSV, CSV.gz, Parquet, or an embedded "
        f"dataset name: {', '.join(datasets.available())}).",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, text in (
        ("validate", _validate, "list every defect (exit 1) or print a summary (exit 0)"),
        ("info", _info, "print a summary and return statistics of valid data"),
    ):
        p = actions.add_parser(
            name,
            help=text,
            description=text,
            epilog=_EXAMPLE,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("file", help="candle file, or the name of an embedded dataset")
        p.add_argument("--time-column", default=None, help="name of the time column")
        p.add_argument("--time-format", default=None, help="strftime format of the time column")
        p.add_argument("--tz", default="UTC", help="timezone of naive timestamps (default UTC)")
        p.set_defaults(func=func)


def _source(args: argparse.Namespace) -> tuple[Path, dict]:
    if args.file in datasets.available() and not Path(args.file).exists():
        fmt = args.time_format or datasets.time_format(args.file)
        return datasets.path(args.file), {"time_format": fmt}
    return Path(args.file), {"time_format": args.time_format}


def _validate(args: argparse.Namespace) -> int:
    path, kw = _source(args)
    errors = find_defects(path, time_column=args.time_column, tz=args.tz, **kw)
    if errors:
        print(f"{path.name}: {len(errors)} kind(s) of defect found")
        for err in errors:
            rows = ", ".join(f"{r:,}" for r in err.rows[:5]) + (" ..." if err.count > 5 else "")
            print(f"  - {err}")
            print(f"    {err.count} row(s); first: {rows}")
        return 1
    candles = load_candles(path, time_column=args.time_column, tz=args.tz, **kw)
    print(f"{path.name}: OK")
    print(summary(candles))
    return 0


def _info(args: argparse.Namespace) -> int:
    path, kw = _source(args)
    candles = load_candles(path, time_column=args.time_column, tz=args.tz, **kw)
    print(f"{path.name}")
    print(summary(candles, returns=True))
    return 0


def summary(candles: pd.DataFrame, *, returns: bool = False) -> str:
    """Human summary: bars, first/last time, median spacing, gaps > 3 spacings (and returns)."""
    idx = candles.index
    lines = [
        f"  bars:           {len(candles):,}",
        f"  first:          {idx[0]}",
        f"  last:           {idx[-1]}",
    ]
    if len(idx) > 1:
        spacing = pd.Series(idx[1:] - idx[:-1])
        median = spacing.median()
        gaps = spacing[spacing > 3 * median]
        lines.append(f"  median spacing: {median}")
        lines.append(
            f"  gaps > 3x:      {len(gaps):,}" + (f" (largest {gaps.max()})" if len(gaps) else "")
        )
    if returns and len(candles) > 2:
        r = np.diff(np.log(candles["close"].to_numpy()))
        lines += [
            f"  close:          {candles['close'].min():.6g} .. {candles['close'].max():.6g}",
            f"  log return:     total {r.sum():+.4f}, per-bar sd {r.std(ddof=1):.3g}",
            f"  lag-1 autocorr: {np.corrcoef(r[1:], r[:-1])[0, 1]:+.4f}",
        ]
    return "\n".join(lines)
