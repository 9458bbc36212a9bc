"""Backtest benchmark: K = 100 passes x 5 seeds over the whole EURUSD series, MLKV policy.

In one run, on the embedded EURUSD H1 series (all 6,225 bars, T = 128, test mode):

* **fast**: wall time of ``evaluation.backtest(policies, candles,
  passes=100, ...)`` with 5 untrained MLKV policies (one per seed), built like
  ``tests/experiments/conftest.py::make_policy`` but with the eurusd-sized encoder of
  ``experiments/configs/eurusd_ppo.yaml`` (d_model 64, reference mlkv plan, encoder window 32,
  account MLP 32, heads [64, 64]). This includes the baselines (buy-and-hold, flat, the
  exposure-matched random passes) and the deterministic pass of every seed;
* **naive**: what an SB3 user would write: one env per pass, one ``policy.predict(obs)`` per
  pass per step (stochastic actions). Timed on a subset (``--naive-steps`` steps of one pass,
  after a few warm-up steps) and extrapolated to 100 passes x 5 seeds x the full walk;

and the ratio naive / fast. Targets (issue 7): <= 30 s and >= 50x the naive loop. The fast
path runs twice, interleaved: the seeds walking one at a time (each lockstep group holds
one policy, as before issue 20's seed batching) and in lockstep (all five seeds' passes
step together: one batched actor call and one env call per step). Policy pass-bars/s =
K x seeds x walk length / wall (the deterministic, random and baseline passes are in the
time, not in the count). Target (issue 20): >= 500k pass-bars/s on 2 cores.

Run::

    .venv-bench/bin/python experiments/studies/bench/backtest_bench.py --threads 1 2  # ~3 min
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time

import numpy as np
import torch

from agents import MLKVActorCriticPolicy
from data import datasets
from envs import EnvConfig, MarketReplayVecEnv
from evaluation import backtest
from experiments.config import ModelConfig
from experiments.factory import policy_kwargs

ENV = EnvConfig(window=128, mode="test")
MODEL = ModelConfig(window=32)  # the eurusd_ppo.yaml encoder


def make_policy(seed: int, candles) -> MLKVActorCriticPolicy:
    """An untrained eurusd-sized MLKV policy (as conftest ``make_policy``, bigger encoder)."""
    torch.manual_seed(seed)
    venv = MarketReplayVecEnv(candles.iloc[:400], ENV, n_envs=1)
    policy = MLKVActorCriticPolicy(
        venv.observation_space, venv.action_space, lambda _: 1e-3, **policy_kwargs(MODEL)
    )
    return policy.eval()


def naive_step_seconds(policy, candles, n_steps: int, warmup: int = 10) -> float:
    """Seconds per step of one pass stepped with ``policy.predict(obs)`` (stochastic)."""
    venv = MarketReplayVecEnv(candles, ENV, n_envs=1, seed=0)
    obs = venv.reset()
    for _ in range(warmup):
        action, _ = policy.predict(obs, deterministic=False)
        obs, *_ = venv.step(np.asarray(action, dtype=np.float32).reshape(-1, 1))
    t0 = time.perf_counter()
    for _ in range(n_steps):
        action, _ = policy.predict(obs, deterministic=False)
        obs, *_ = venv.step(np.asarray(action, dtype=np.float32).reshape(-1, 1))
    return (time.perf_counter() - t0) / n_steps


def timed_backtest(policies, candles, passes: int, lockstep: bool) -> tuple[float, int]:
    """Wall seconds of one ``backtest`` call and its walk length; ``lockstep=False`` walks
    the policies one at a time (every lockstep group holds one policy: the code before)."""
    module = importlib.import_module("evaluation.backtest")
    saved = module.LOCKSTEP_BYTES
    module.LOCKSTEP_BYTES = saved if lockstep else 0
    try:
        t0 = time.perf_counter()
        result = backtest(policies, candles, passes=passes, env_config=ENV, seed=0)
        return time.perf_counter() - t0, result.settings["n_bars"]
    finally:
        module.LOCKSTEP_BYTES = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--passes", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path")
    ap.add_argument("--naive-steps", type=int, default=200)
    args = ap.parse_args()

    import stable_baselines3

    candles = datasets.load("eurusd_h1")
    policies = [make_policy(s, candles) for s in range(args.seeds)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"average {load:.1f} at start; torch {torch.__version__}, SB3 "
        f"{stable_baselines3.__version__}, numpy {np.__version__}; EURUSD {len(candles)} "
        f"bars, T={ENV.window}, K={args.passes} passes x {args.seeds} seeds; median of "
        f"{args.repeats} interleaved runs"
    )
    print(
        "| threads | seeds walked | backtest() wall s | policy pass-bars/s | lockstep / one at a "
        "time | naive predict ms/step | naive extrapolated s | naive / this |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        timed_backtest(policies, candles.iloc[:600], args.passes, True)  # warm-up
        walls: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for lockstep in (False, True):
                wall, walk = timed_backtest(policies, candles, args.passes, lockstep)
                walls[lockstep].append(wall)
        per_step = naive_step_seconds(policies[0], candles, args.naive_steps)
        naive = per_step * walk * args.passes * args.seeds
        single = float(np.median(walls[False]))
        for lockstep, label in ((False, "one at a time"), (True, "in lockstep")):
            wall = float(np.median(walls[lockstep]))
            rate = walk * args.passes * args.seeds / wall
            print(
                f"| {threads} | {label} | {wall:,.2f} | {rate / 1e3:,.0f}k "
                f"| {single / wall:.2f}x | {per_step * 1e3:.2f} | {naive:,.0f} "
                f"| {naive / wall:,.0f}x |"
            )


if __name__ == "__main__":
    main()
