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

and the ratio naive / fast. Targets (issue 7): <= 30 s and >= 50x the naive loop.

Run::

    .venv-bench/bin/python experiments/studies/bench/backtest_bench.py             # about a minute
    .venv-bench/bin/python experiments/studies/bench/backtest_bench.py --threads 2
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--passes", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--naive-steps", type=int, default=200)
    args = ap.parse_args()

    import stable_baselines3

    candles = datasets.load("eurusd_h1")
    policies = [make_policy(s, candles) for s in range(args.seeds)]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"SB3 {stable_baselines3.__version__}, numpy {np.__version__}; EURUSD {len(candles)} "
        f"bars, T={ENV.window}, K={args.passes} passes x {args.seeds} seeds"
    )
    print(
        "| threads | fast backtest() wall s | naive predict ms/step | naive extrapolated s "
        "| naive / fast |"
    )
    print("|---|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        result = backtest(policies, candles, passes=args.passes, env_config=ENV, seed=0)
        fast = time.perf_counter() - t0
        walk = result.settings["n_bars"]  # steps of one pass over the whole series
        per_step = naive_step_seconds(policies[0], candles, args.naive_steps)
        naive = per_step * walk * args.passes * args.seeds
        print(
            f"| {threads} | {fast:,.1f} | {per_step * 1e3:.2f} | {naive:,.0f} "
            f"| {naive / fast:,.0f}x |"
        )


if __name__ == "__main__":
    main()
