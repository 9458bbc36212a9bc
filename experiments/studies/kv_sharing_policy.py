"""KV-sharing at the policy level: PPO on the long-memory echo market, judged by the verdict.

The prediction ablation (:mod:`experiments.studies.kv_sharing_ablation`) asks how well each
KV-sharing plan *predicts*; this study asks whether a PPO policy built on it *learns to
trade* the same long-memory edge. The market is ``data.synthetic.echo`` (each return echoes
the one 48 bars back with coefficient 0.5, independent of the bars in between), configured
in ``experiments/configs/echo_ppo.yaml``. Three plans of the config's 6-layer, 4-head
encoder get the **same receptive field** of 49 bars (>= the lag 48) through their windows:

* MHA (6 KV layers x 4 KV heads), ``W = 9``;
* MLKV-3 (3 KV layers x 1 KV head), ``W = 17``;
* MLKV-1 (1 KV layer x 1 KV head), ``W = 49``.

Each plan is trained with 3 seeds (same market, new agent), then the 3 runs are backtested
together on the untouched test split (``K`` stochastic passes per run) and judged by the
evaluator's verdict (LEARNED / CONSISTENT-BUT-NO-EDGE / RANDOM / INCONCLUSIVE).

Usage::

    python -m experiments.studies.kv_sharing_policy --write-docs  # 9 runs, ~18 min (see below)
    python -m experiments.studies.kv_sharing_policy --steps 8192 --seeds 1 # a quick look
    python -m experiments.studies.kv_sharing_policy --device cuda --steps 196608

``--write-docs`` replaces the block between the policy markers in ``docs/mlkv.md``.

Each run took 86-146 s of wall time on the shared 2-core CPU with two training processes
side by side (``--train-only`` with ``--plans``/``--seed-list`` split between them; a
later run without ``--train-only`` reuses the finished runs and only backtests, ~20 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from experiments.backtesting import BacktestRequest, backtest_runs
from experiments.config import load_config
from experiments.runs import load_run_config
from experiments.studies.kv_sharing_ablation import DOCS, machine, write_docs
from experiments.train import train
from models import cache_bytes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "echo_ppo.yaml"
BEGIN, END = "<!-- policy-ablation:begin -->", "<!-- policy-ablation:end -->"

#: label -> (plan as YAML, window W); all 6 layers x 4 query heads, receptive field 49
PLANS: dict[str, tuple[str, int]] = {
    "MHA": ("{kind: mha, n_layers: 6, n_heads: 4}", 9),
    "MLKV-3": ("{kind: mlkv, n_layers: 6, n_heads: 4, n_kv_heads: 1, n_kv_layers: 3}", 17),
    "MLKV-1": ("{kind: mlkv, n_layers: 6, n_heads: 4, n_kv_heads: 1, n_kv_layers: 1}", 49),
}


def finished_run(folder: Path, config) -> Path | None:
    """A finished run (``final.zip``) under ``folder`` trained with exactly ``config``."""
    for run in sorted(folder.glob(f"*-s{config.seed}*")):
        if (run / "final.zip").is_file() and load_run_config(run) == config:
            return run
    return None


def training_seconds(run: Path) -> float:
    """Wall seconds SB3 logged for a finished run (its last ``time/time_elapsed``)."""
    log = pd.read_csv(run / "progress.csv")
    return float(log["time/time_elapsed"].dropna().iloc[-1])


def run_plan(label: str, args: argparse.Namespace) -> dict:
    """Train ``args.seeds`` runs of one plan, backtest them together, return the row."""
    plan, window = PLANS[label]
    t_plan = time.perf_counter()
    dirs, train_s, reused = [], [], 0
    for seed in args.seed_list:
        overrides = [
            f"seed={seed}",
            f"model.plan={plan}",
            f"model.window={window}",
            f"total_steps={args.steps}",
            f"data.n_bars={args.n_bars}",
            f"device={args.device}",
            f"threads={args.threads}",
            f"name=echo_ppo_{label.lower().replace('-', '')}",
        ]
        config = load_config(args.config, overrides)
        done = finished_run(Path(args.runs_root) / config.name, config)
        if done is not None:  # trained before (e.g. by a parallel --train-only process)
            dirs.append(done)
            train_s.append(training_seconds(done))
            reused += 1
            print(f"{label} seed {seed}: reusing {done} ({train_s[-1]:.0f} s)", flush=True)
            continue
        t0 = time.perf_counter()
        dirs.append(train(config, runs_root=args.runs_root, show_progress=False))
        train_s.append(time.perf_counter() - t0)
        print(f"{label} seed {seed}: trained in {train_s[-1]:.0f} s -> {dirs[-1]}", flush=True)
    if args.train_only:
        return {}
    out = Path(args.runs_root) / f"backtest_{label.lower().replace('-', '')}"
    outcome = backtest_runs(
        BacktestRequest(runs=tuple(dirs), passes=args.passes, out=out), show_progress=False
    )
    assert outcome is not None  # in-process backtests always return
    verdict = outcome.summary["verdict"]
    enc = config.model.encoder()
    return {
        "plan": label,
        "window": window,
        "receptive_field": config.model.receptive_field,
        "kv_bytes_env": cache_bytes(enc.plan, enc.head_dim, 1, window, torch.float32),
        "train_s": train_s,
        "runs": [str(d) for d in dirs],
        "label": verdict["label"],
        "rho": verdict["rho"],
        "excess_total": verdict["excess_total"],
        "excess_p": verdict["excess_p"],
        "timing_p": verdict["timing_p"],
        "seed_share": verdict["seed_share"],
        "seed_mean_returns": [s["mean_pass_return"] for s in verdict["seeds"]],
        "backtest": str(outcome.json_path),
        "wall_s": time.perf_counter() - t_plan,
        "reused": reused,
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Settings: `{Path(args.config).name}` with `total_steps={args.steps}`, "
        f"`data.n_bars={args.n_bars}` (test split {int(args.n_bars * 0.15):,} bars), "
        f"{len(args.seed_list)} training seeds per plan, {args.passes} stochastic passes per run, "
        f"device {args.device}. Machine: {args.machine}. Run {args.date}; load average "
        f"(1 min) {args.load_start:.1f} at the start, {args.load_end:.1f} at the end.",
        "",
        "| plan | W | receptive field | KV bytes/env (fp32) | train s/run | verdict | rho | "
        "excess over B&H (p) | timing p | seeds decisive with edge | mean pass log return "
        "per seed |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['plan']} | {r['window']} | {r['receptive_field']} | {r['kv_bytes_env']:,} | "
            f"{sum(r['train_s']) / len(r['train_s']):.0f} | **{r['label']}** | {r['rho']:.2f} | "
            f"{r['excess_total']:+.3f} ({r['excess_p']:.3f}) | {r['timing_p']:.3f} | "
            f"{r['seed_share']:.0%} | "
            + ", ".join(f"{v:+.3f}" for v in r["seed_mean_returns"])
            + " |"
        )
    total = sum(sum(r["train_s"]) for r in rows)
    reused = sum(r.get("reused", 0) for r in rows)
    if args.merge:
        wall = ""
    elif reused:
        wall = (
            f"; wall time of this invocation {args.wall_s:.0f} s (backtests; {reused} of "
            f"{sum(len(r['train_s']) for r in rows)} runs were trained before and reused)"
        )
    else:
        wall = f"; wall time (training + backtests) {args.wall_s:.0f} s"
    lines += [
        "",
        f"Total training time {total:.0f} s (wall, summed over runs){wall}.",
        "",
        f"Command: `{args.command}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description="PPO on the echo market with MHA, MLKV-3 and MLKV-1 at equal receptive "
        "field (49 bars), 3 seeds each, backtested with the verdict.",
        epilog="example: python -m experiments.studies.kv_sharing_policy --write-docs",
    )
    p.add_argument("--config", default=str(CONFIG), help="base YAML (the echo market)")
    p.add_argument("--plans", default=",".join(PLANS), help=f"comma list of {', '.join(PLANS)}")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per plan")
    p.add_argument(
        "--seed-list",
        default=None,
        help="train only these seeds (comma list), e.g. with "
        "--train-only in parallel processes; finished runs under --runs-root are reused",
    )
    p.add_argument("--train-only", action="store_true", help="train, do not backtest")
    p.add_argument("--steps", type=int, default=65_536, help="PPO env steps per run")
    p.add_argument("--n-bars", type=int, default=40_000, help="bars of the echo market")
    p.add_argument("--passes", type=int, default=20, help="stochastic test passes per run")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch/numba threads")
    p.add_argument("--runs-root", default="runs/kv_sharing_policy", help="where runs go")
    p.add_argument("--write-docs", action="store_true", help="update docs/mlkv.md")
    p.add_argument("--json", default=None, help="also write the rows here (after each plan)")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="train nothing: render (and --write-docs) the rows of earlier --json files, e.g. "
        "one per plan run in parallel; pass the same --steps/--n-bars/--seeds/--passes",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "-m", "experiments.studies.kv_sharing_policy", *argv])
    labels = [x.strip() for x in args.plans.split(",") if x.strip()]
    args.seed_list = (
        [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    )
    if bad := [x for x in labels if x not in PLANS]:
        p.error(f"--plans: unknown {bad}; use {', '.join(PLANS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; use --device cpu")
    torch.set_num_threads(args.threads)
    args.machine = machine()
    args.load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows: list[dict] = []
    if args.merge:
        for path in args.merge:
            rows += json.loads(Path(path).read_text())
        rows.sort(key=lambda r: list(PLANS).index(r["plan"]))
    for label in [] if args.merge else labels:
        rows.append(run_plan(label, args))
        if args.train_only:
            rows.pop()
        elif args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    args.wall_s = time.perf_counter() - t0
    if args.train_only:  # nothing to tabulate: no backtests ran
        print(f"trained in {args.wall_s:.0f} s; run again without --train-only to backtest")
        return rows
    args.load_end = os.getloadavg()[0]
    args.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.merge:
        args.wall_s = sum(r.get("wall_s", sum(r["train_s"])) for r in rows)
    text = markdown(rows, args)
    print("\n" + text)
    if args.write_docs:
        write_docs(text, BEGIN, END)
        print(f"updated {DOCS / 'mlkv.md'}")
    return rows


if __name__ == "__main__":
    main()
