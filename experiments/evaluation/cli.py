"""What `mlkv-trader backtest` and `compare` do, behind their thin argument parsers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from experiments.config import DataConfig, TrainConfig
from experiments.evaluation import stats
from experiments.evaluation.backtest import backtest, read_json, write_json
from experiments.evaluation.report import write_report
from experiments.evaluation.runs import load_policy
from experiments.progress import console
from experiments.train import load_market, load_run_config, load_split


def candles_to_test(config: TrainConfig, data: str | None, split: str) -> pd.DataFrame:
    """The bars to test on: the run's own data (or ``data``), restricted to ``split``."""
    cfg = (
        config.data
        if data is None
        else DataConfig(source=data, fractions=config.data.fractions, embargo=config.data.embargo)
    )
    if split == "all":
        return load_market(cfg)
    return getattr(load_split(cfg), split)


def run_backtest(args: argparse.Namespace) -> int:
    """Load the runs, backtest them, write JSON + HTML atomically, print the verdict."""
    configs = [load_run_config(r) for r in args.runs]
    windows = {c.env.window for c in configs}
    if len(windows) > 1:
        raise ValueError(
            f"the runs use different env windows {sorted(windows)}; backtest runs "
            "of one experiment together."
        )
    candles = candles_to_test(configs[0], args.data, args.split)
    policies = [load_policy(r, candles=candles, prefer=args.checkpoint)[0] for r in args.runs]
    names = [str(r) for r in args.runs]
    console.print(
        f"backtesting {len(policies)} run(s) x {args.passes} passes over "
        f"{len(candles):,} bars ({args.split} split)"
    )
    with console.status("running passes...") as status:
        result = backtest(
            policies,
            candles,
            passes=args.passes,
            env_config=configs[0].env,
            seed=args.seed,
            names=names,
            on_policy_done=lambda i, n: status.update(f"run {i + 1}/{len(names)} done: {n}"),
        )
    summary = result.summary()
    summary["settings"].update(
        {
            "split": args.split,
            "data": args.data or configs[0].data.source,
            "checkpoint": args.checkpoint,
        }
    )
    publish(summary, args.out or default_out(args.runs))
    return 0


def default_out(runs: list[Path]) -> Path:
    """Where a backtest of ``runs`` writes: the run itself, or the runs' common parent."""
    if len(runs) == 1:
        return runs[0]
    return Path(os.path.commonpath([str(r.resolve()) for r in runs]))


def publish(summary: dict[str, Any], out: Path) -> Path:
    """Write ``backtest.json`` and ``report.html`` into ``out`` (atomically), print the
    verdict and both paths; returns the report's path."""
    json_path = write_json(summary, out / "backtest.json")
    html_path = write_report(summary, out / "report.html")
    print_summary(summary)
    console.print(f"backtest: [bold]{json_path}[/bold]")
    console.print(f"report: [bold]{html_path}[/bold]")
    return html_path


def print_summary(summary: dict[str, Any]) -> None:
    """The verdict, its checks and a per-run table, printed with rich."""
    v = summary["verdict"]
    colour = {"LEARNED": "green", "RANDOM": "red"}.get(v["label"], "yellow")
    console.print(f"\nverdict: [bold {colour}]{v['label']}[/]  {v['explanation']}")
    checks = Table(title="checks")
    for col in ("check", "statistic", "p-value", "threshold", "pass"):
        checks.add_column(col)
    for c in v["checks"].values():
        checks.add_row(
            c["name"],
            _f(c["statistic"]),
            _f(c["p_value"]),
            _f(c["threshold"]),
            "yes" if c["passed"] else "no",
        )
    console.print(checks)
    table = Table(title="per run (log returns over the test period)")
    for col in ("run", "total", "sharpe", "max dd", "turnover", "psr"):
        table.add_column(col)
    for row in summary["metrics"]["rows"]:
        m = row["metrics"]
        table.add_row(
            row["name"],
            _f(m["total_log_return"]),
            _f(m["sharpe"]),
            _f(m["max_drawdown"]),
            _f(m["turnover"]),
            _f(m["psr"]),
        )
    console.print(table)


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def seed_means(doc: dict[str, Any]) -> np.ndarray:
    """Mean total log return of the stochastic passes, one per run: ``[n_runs]``."""
    return np.array([np.mean(p) for p in doc["pass_totals"]["policy"]], dtype=np.float64)


def run_compare(args: argparse.Namespace) -> int:
    """IQM (95% CI) of each set and the probability that A improves on B."""
    a, b = seed_means(read_json(args.a)), seed_means(read_json(args.b))
    table = Table(title="per-run mean pass log return")
    for col in ("set", "runs", "IQM", "95% CI"):
        table.add_column(col)
    for name, x in ((str(args.a), a), (str(args.b), b)):
        if x.size > 1:
            iqm, lo, hi = stats.iqm_ci(x, rng=0)
            ci = f"{lo:+.4f} .. {hi:+.4f}"
        else:
            iqm, ci = float(x[0]), "- (one run)"
        table.add_row(name, str(x.size), f"{iqm:+.4f}", ci)
    console.print(table)
    console.print(f"P(A > B) = {stats.probability_of_improvement(a, b):.3f}")
    return 0
