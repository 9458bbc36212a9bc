"""Backtest scale benchmark: wall time and peak memory vs bars x passes x seeds (issue 20).

Each configuration runs ``evaluation.backtest`` in a fresh subprocess on synthetic
minute bars (GBM, ``freq="1min"``; 370k bars is about one year of an FX pair's M1 candles)
with untrained eurusd-sized MLKV policies (:func:`backtest_bench.make_policy`), T = 128,
1 torch thread, and reports the wall time of the call, the pass-bars per second (K x seeds
x bars / wall; the deterministic, random and baseline passes are included in the time, not
in the count) and the subprocess's peak RSS. ``--before PATH`` also runs every
configuration with the code at PATH (e.g. ``git worktree add /tmp/before 7dfb25d``), in the
same run, so the two are compared under the same machine load; a run that passes
``--timeout`` seconds is reported as such.

Run::

    python experiments/studies/bench/backtest_scale.py --before /tmp/before \\
        --bars 6000 60000 370000 --passes 20 --seeds 2 --timeout 900
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

WORKER = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from data import synthetic
from evaluation import backtest
from experiments.studies.bench.backtest_bench import ENV, make_policy
bars, passes, seeds = {bars}, {passes}, {seeds}
candles = synthetic.gbm(bars + ENV.window, seed=0, freq="1min", vol=3e-4)
policies = [make_policy(s, candles) for s in range(seeds)]
backtest(policies[0], candles.iloc[:600], passes=passes, env_config=ENV, seed=0)  # warm-up
t0 = time.perf_counter()
result = backtest(policies, candles, passes=passes, env_config=ENV, seed=0)
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"wall": wall, "rss": rss, "n": result.settings["n_bars"],
                  "label": result.verdict.label}}))
"""


def run_one(code: Path, bars: int, passes: int, seeds: int, timeout: float) -> dict:
    """One configuration in a subprocess with ``code`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    script = WORKER.format(bars=bars, passes=passes, seeds=seeds)
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=code, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed",
                "elapsed": time.perf_counter() - t0}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(code: str, bars: int, passes: int, seeds: int, r: dict) -> str:
    head = f"| {code} | {bars:,} | {passes} | {seeds} "
    if "timeout" in r:
        return head + f"| > {r['timeout']:,.0f} (stopped) | - | - | - |"
    if "error" in r:
        return head + f"| failed: {r['error'][:60]} | - | - | - |"
    rate = passes * seeds * r["n"] / r["wall"]
    gib = r["rss"] / 2**30
    return head + f"| {r['wall']:,.1f} | {rate / 1e3:,.0f}k | {gib:.2f} | {r['label']} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, nargs="+", default=[6000, 60000, 370000])
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--before", type=Path, default=None, help="checkout of the code to compare")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load:.1f} at start; K={args.passes} passes x {args.seeds} seeds, T=128, 1 thread"
    )
    print("| code | bars | passes | seeds | wall s | policy pass-bars/s | peak RSS GiB | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    codes = [("after", ROOT)] + ([("before", args.before)] if args.before else [])
    for bars in args.bars:
        for name, code in codes:
            r = run_one(code, bars, args.passes, args.seeds, args.timeout)
            print(_row(name, bars, args.passes, args.seeds, r), flush=True)


if __name__ == "__main__":
    main()
