"""Environment benchmark: gym-anytrading ``forex-v0`` vs our single env and batched VecEnv.

Steps/s of, in one run on the embedded EURUSD H1 data:

* the peer, exactly as ``shared/anchors/anchor_cpu.py`` defines it: gym-anytrading
  ``forex-v0`` (unwrapped) at window 32 and 128, one random discrete action drawn per step;
* ``MarketReplayEnv`` (train mode, default costs and episode length) at T = 32 and 128, one
  random continuous action (a float in [-1, 1]) drawn per step;
* ``MarketReplayVecEnv`` at N = 1, 16, 256 and T = 32, 128, one random ``[N, 1]`` action
  array drawn per step (steps/s counts env-steps: N per call);

and each one's ratio to the peer at the same window. Targets (issue 4): VecEnv >= 40x the
peer at T = 32, N = 256; single env >= 1x.

Protocol: every configuration is timed ``--repeats`` times, the repeats of all
configurations interleaved (so background load hits them alike); the table gives the median
steps/s, its ratio to the peer's median, and the ratio of the best repeats (closest to an
idle machine). The machine is shared: read the ratios, not the absolute figures.

gym-anytrading is **not** a project dependency. Install it in the benchmark's own,
gitignored venv::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e . gym-anytrading==2.0.0
    .venv-bench/bin/python experiments/studies/bench/env_bench.py            # about a minute
    .venv-bench/bin/python experiments/studies/bench/env_bench.py --quick    # a smoke run

Without gym-anytrading, only our figures are printed (no ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

from data import datasets
from envs import EnvConfig, MarketReplayEnv, MarketReplayVecEnv

WINDOWS = (32, 128)
N_ENVS = (1, 16, 256)


@dataclass
class Case:
    """One configuration: a name, its window, N, and a timed run ``steps -> seconds``."""

    name: str
    window: int
    n_envs: int
    run: Callable[[int], float]
    steps: int  # env-steps per repeat
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def best(self) -> float:
        return max(self.rates)


def peer_case(window: int, steps: int) -> Case | None:
    """gym-anytrading ``forex-v0`` as in ``anchor_cpu.py`` (None if not installed)."""
    try:
        import gym_anytrading  # noqa: F401  (registers forex-v0)
        import gymnasium as gym
        from gym_anytrading.datasets import FOREX_EURUSD_1H_ASK as DF
    except ImportError:
        return None
    env = gym.make("forex-v0", df=DF, window_size=window, frame_bound=(window, len(DF))).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            _, _, term, trunc, _ = env.step(int(rng.integers(2)))
            if term or trunc:
                env.reset()
        return time.perf_counter() - t0

    return Case("gym-anytrading forex-v0", window, 1, run, steps)


def single_case(candles, window: int, steps: int) -> Case:
    env = MarketReplayEnv(candles, EnvConfig(window=window))
    env.reset(seed=0)
    rng = np.random.default_rng(0)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            _, _, term, trunc, _ = env.step(rng.uniform(-1.0, 1.0))
            if term or trunc:
                env.reset()
        return time.perf_counter() - t0

    return Case("MarketReplayEnv", window, 1, run, steps)


def vec_case(candles, window: int, n_envs: int, steps: int, min_calls: int) -> Case:
    vec = MarketReplayVecEnv(candles, EnvConfig(window=window), n_envs=n_envs, seed=0)
    vec.reset()
    rng = np.random.default_rng(0)

    def run(n: int) -> float:
        calls = max(n // n_envs, 1)
        t0 = time.perf_counter()
        for _ in range(calls):
            actions = rng.random((n_envs, 1), dtype=np.float32)
            actions *= 2.0
            actions -= 1.0
            vec.step(actions)
        return time.perf_counter() - t0

    return Case("MarketReplayVecEnv", window, n_envs, run, max(steps, min_calls * n_envs))


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    parser.add_argument("--steps", type=int, default=40_000, help="env-steps per repeat")
    parser.add_argument("--quick", action="store_true", help="2 short repeats (a smoke run)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    repeats, steps = (2, 5_000) if args.quick else (args.repeats, args.steps)

    candles = datasets.load("eurusd_h1")
    cases: list[Case] = []
    peers = {w: peer_case(w, steps) for w in WINDOWS}
    cases += [p for p in peers.values() if p is not None]
    cases += [single_case(candles, w, steps) for w in WINDOWS]
    min_calls = 1_000 if args.quick else 16_000
    cases += [vec_case(candles, w, n, steps, min_calls) for w in WINDOWS for n in N_ENVS]

    info = machine()
    for case in cases:  # warm-up: numba compilation, caches, first resets
        case.run(min(case.steps, 2_000))
    for _ in range(repeats):
        for case in cases:
            case.rates.append(case.steps / case.run(case.steps))
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']}")
    print(f"python {info['python']}, numpy {info['numpy']}, numba {info['numba']}")
    print(f"median of {repeats} interleaved repeats, env-steps/s\n")
    print("| env | T | N | steps/s (median) | x forex-v0 (median) | x forex-v0 (best of each) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for case in cases:
        peer = peers.get(case.window)
        ratio = case.median / peer.median if peer is not None else float("nan")
        best_ratio = case.best / peer.best if peer is not None else float("nan")
        rows.append(
            {
                "env": case.name,
                "T": case.window,
                "N": case.n_envs,
                "steps_per_s": case.median,
                "ratio": ratio,
                "best_ratio": best_ratio,
                "repeats": case.rates,
            }
        )
        shown = "n/a" if peer is None else f"{ratio:.1f} | {best_ratio:.1f}"
        print(f"| {case.name} | {case.window} | {case.n_envs} | {case.median:,.0f} | {shown} |")

    verdicts = {}
    if peers[32] is not None:
        vec256 = next(r for r in rows if r["env"] == "MarketReplayVecEnv" and r["T"] == 32
                      and r["N"] == 256)  # fmt: skip
        single = next(r for r in rows if r["env"] == "MarketReplayEnv" and r["T"] == 32)
        verdicts = {
            "vec_T32_N256_ge_40x": vec256["ratio"] >= 40.0,
            "single_T32_ge_1x": single["ratio"] >= 1.0,
        }
        met = {k: "met" if v else "NOT met" for k, v in verdicts.items()}
        print(
            f"\ntargets (medians): VecEnv T=32 N=256 {vec256['ratio']:.1f}x (>= 40x: "
            f"{met['vec_T32_N256_ge_40x']}); single env T=32 {single['ratio']:.2f}x "
            f"(>= 1x: {met['single_T32_ge_1x']})"
        )
    else:
        print("\ngym-anytrading is not installed here: no ratios (see this file's docstring).")
    result = {"machine": info, "rows": rows, "targets": verdicts}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
    return result


if __name__ == "__main__":
    main()
