"""PPO training benchmark: env-steps/s and gradient steps/s, at equal PPO work and as shipped.

In one process, same machine, the setups run interleaved ``--repeats`` times (median
reported):

* **MlpPolicy**: SB3 PPO ``MlpPolicy`` on gym-anytrading ``forex-v0`` (window 32, n_envs 1,
  n_steps 2048, batch 64, 10 epochs: SB3's defaults), exactly as
  ``shared/anchors/anchor_cpu.py::ppo_fps``;
* **peer**: SB3 PPO with a ``torch.nn.TransformerEncoder`` extractor (d 64, 4 layers, 4
  heads, norm_first, causal) over T = 128 windows of ``forex-v0`` (n_steps 512, batch 64, 10
  epochs), exactly as ``shared/anchors/peer_ppo_transformer.py``. It is slow, so it runs a
  smaller budget (one rollout + one update);
* **ours, equal work**: ``MLKVPPO`` on ``MarketReplayVecEnv`` (T = 128) built by
  ``experiments.factory`` from ``experiments/configs/eurusd_ppo.yaml`` (reference plan, 9
  layers, d_model 64, encoder window 16) with SB3's PPO work: 8 envs x 256 steps = 2,048
  samples per update, minibatch 64, 10 epochs (``10 / 64`` gradient steps per sample, as
  both SB3 setups);
* **ours, shipped**: the same with ``eurusd_ppo.yaml`` as it is (8 x 512 samples, minibatch
  256, 4 epochs: ``4 / 256`` gradient steps per sample, 10x fewer).

Each figure counts the whole ``learn`` call (rollouts + updates). Reported per setup: FPS
(env steps / wall s), CPU FPS (env steps / CPU s of this process: with ``threads = 1`` this
is what a quiet core gives, while wall time also counts waiting for a core on a loaded
machine), gradient steps/s (CPU), the share of CPU time spent in ``train()``, and ratios
ours / MlpPolicy and ours / peer on CPU FPS. Targets (issue 16), at equal work and one
thread: >= 0.5x MlpPolicy and >= 20x the peer; shipped config >= 1.0x MlpPolicy.

gym-anytrading is not a project dependency; run in a benchmark venv::

    python -m venv /tmp/bench && /tmp/bench/bin/pip install torch==2.13.0 \\
        && /tmp/bench/bin/pip install -e . gym-anytrading==2.0.0
    /tmp/bench/bin/python experiments/studies/bench/train_bench.py              # 1 thread
    /tmp/bench/bin/python experiments/studies/bench/train_bench.py --threads 1 2
    /tmp/bench/bin/python experiments/studies/bench/train_bench.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eurusd_ppo.yaml"


@dataclass
class Run:
    """One timed ``learn`` call."""

    steps: int  # env steps
    wall: float  # s
    cpu: float  # process CPU s
    grad_steps: int  # optimizer steps
    train_cpu: float  # process CPU s inside train()


def timed_learn(model: Any, total: int) -> Run:
    """``model.learn(total)`` with its optimizer steps and its CPU time in ``train()``."""
    counter = {"steps": 0, "train": 0.0}
    model.policy.optimizer.register_step_post_hook(
        lambda *_: counter.__setitem__("steps", counter["steps"] + 1)
    )
    train = model.train

    def counted_train() -> None:
        t = time.process_time()
        train()
        counter["train"] += time.process_time() - t

    model.train = counted_train
    w0, c0 = time.perf_counter(), time.process_time()
    model.learn(total)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return Run(model.num_timesteps, wall, cpu, counter["steps"], counter["train"])


def forex_env(window: int) -> Any:
    import gym_anytrading  # noqa: F401
    import gymnasium as gym
    from gym_anytrading.datasets import FOREX_EURUSD_1H_ASK as DF

    return gym.make("forex-v0", df=DF, window_size=window, frame_bound=(window, len(DF)))


def mlp_run(total: int) -> Run:
    """SB3 PPO MlpPolicy on forex-v0, window 32, n_envs 1 (anchor_cpu.py ``ppo_fps``)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(lambda: forex_env(32), n_envs=1, seed=0)
    m = PPO("MlpPolicy", venv, n_steps=2048, batch_size=64, seed=0, device="cpu")
    return timed_learn(m, total)


class TfExtractor(BaseFeaturesExtractor):
    """peer_ppo_transformer.py's extractor (d 64, 4 layers, 4 heads, norm_first, causal)."""

    def __init__(self, space: Any, d: int = 64, n_layers: int = 4, heads: int = 4) -> None:
        super().__init__(space, d)
        self.inp = nn.Linear(space.shape[-1], d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, batch_first=True, norm_first=True, dropout=0.0
        )
        self.enc = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(space.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(self.inp(x), mask=self.mask, is_causal=True)[:, -1]


def peer_run(total: int, window: int = 128) -> Run:
    """SB3 PPO with an nn.TransformerEncoder extractor (peer_ppo_transformer.py)."""
    from stable_baselines3 import PPO

    m = PPO(
        "MlpPolicy",
        forex_env(window),
        n_steps=512,
        batch_size=64,
        n_epochs=10,
        seed=0,
        device="cpu",
        policy_kwargs={"features_extractor_class": TfExtractor},
    )
    return timed_learn(m, total)


def ours_agent(equal_work: bool, device: str = "cpu", compile_update: bool = False) -> Any:
    """MLKVPPO on MarketReplayVecEnv from eurusd_ppo.yaml; ``equal_work``: SB3's PPO work."""
    from experiments.config import load_config
    from experiments.factory import build_agent, load_split, make_venv

    cfg = replace(load_config(CONFIG), device=device)
    cfg = replace(cfg, ppo=replace(cfg.ppo, compile_update=compile_update))
    if equal_work:  # 2,048 samples per update, minibatch 64, 10 epochs
        ppo = replace(cfg.ppo, n_steps=2048 // cfg.n_envs, batch_size=64, n_epochs=10)
        cfg = replace(cfg, ppo=ppo)
    return build_agent(cfg, make_venv(load_split(cfg.data).train, cfg))


def ours_run(total: int, equal_work: bool, device: str = "cpu") -> Run:
    """A fresh agent's timed ``learn(total)`` (:func:`ours_agent`)."""
    return timed_learn(ours_agent(equal_work, device), total)


class CompiledOurs:
    """Ours at equal work with ``ppo.compile_update``, timed after its one-off compile.

    The first call builds the agent and runs one rollout and update (which compiles the
    update's graphs: :attr:`compile_s` wall seconds); every call then times ``learn(total)``
    of that same agent, so the figure is the compiled update's steady state.
    """

    def __init__(self, total: int) -> None:
        self.total, self.model, self.compile_s = total, None, float("nan")

    def __call__(self) -> Run:
        if self.model is None:
            self.model = ours_agent(True, compile_update=True)
            t0 = time.perf_counter()
            self.model.learn(self.model.n_steps * self.model.n_envs)
            self.compile_s = time.perf_counter() - t0
        return timed_learn(self.model, self.total)


def median_run(runs: list[Run]) -> Run:
    """The run of median CPU time (its own wall time and counters go with it)."""
    return sorted(runs, key=lambda r: r.cpu)[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: train_bench.py --threads 1 2 --repeats 3",
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=4096, help="budget of MlpPolicy and ours")
    ap.add_argument("--peer-steps", type=int, default=512, help="budget of the slow peer")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per setup")
    ap.add_argument("--peer-repeats", type=int, default=1, help="runs of the (slow) peer")
    ap.add_argument("--no-peer", action="store_true", help="skip the (slow) peer")
    ap.add_argument("--cuda", action="store_true", help="also time ours with device='cuda'")
    ap.add_argument("--quick", action="store_true", help="one repeat, no peer (smoke run)")
    ap.add_argument(
        "--compiled", action="store_true",
        help="add ours at equal work with ppo.compile_update (timed after its compile)",
    )
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.no_peer = 1, True

    import numpy
    import stable_baselines3

    load = os.getloadavg()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, SB3 {stable_baselines3.__version__}, numpy {numpy.__version__}; "
        f"budgets: MlpPolicy/ours {args.steps} steps, peer {args.peer_steps} steps; median of "
        f"{args.repeats} (peer {min(args.peer_repeats, args.repeats)}); load average at start "
        f"{load[0]:.1f}"
    )
    setups: dict[str, tuple[str, Callable[[], Run]]] = {
        "mlp": ("SB3 MlpPolicy (2048/64/10)", lambda: mlp_run(args.steps)),
        "peer": ("SB3 TransformerEncoder peer (512/64/10)", lambda: peer_run(args.peer_steps)),
        "equal": ("ours, equal work (8x256/64/10)", lambda: ours_run(args.steps, True)),
        "shipped": ("ours, shipped eurusd_ppo (8x512/256/4)", lambda: ours_run(args.steps, False)),
    }
    compiled = CompiledOurs(args.steps)
    if args.compiled:
        setups["compiled"] = ("ours, equal work, compile_update (8x256/64/10)", compiled)
    if args.no_peer:
        del setups["peer"]
    print(
        "| threads | setup (samples per update / minibatch / epochs) | FPS (wall) | FPS (CPU) "
        "| grad steps/s (CPU) | update share of CPU | ours / this (CPU FPS) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs: dict[str, list[Run]] = {key: [] for key in setups}
        for i in range(args.repeats):
            for key, (_, fn) in setups.items():
                if key != "peer" or i < args.peer_repeats:
                    runs[key].append(fn())
        med = {key: median_run(r) for key, r in runs.items()}
        fps = {key: r.steps / r.cpu for key, r in med.items()}
        for key, (name, _) in setups.items():
            r = med[key]
            ratio = (
                f"equal {fps['equal'] / fps[key]:,.2f}x / shipped {fps['shipped'] / fps[key]:,.2f}x"
                + (f" / compiled {fps['compiled'] / fps[key]:,.2f}x" if "compiled" in fps else "")
                if key in ("mlp", "peer") else ""
            )
            print(
                f"| {threads} | {name} | {r.steps / r.wall:,.1f} | {fps[key]:,.1f} | "
                f"{r.grad_steps / r.cpu:,.1f} | {r.train_cpu / r.cpu:.0%} | {ratio} |"
            )
    if args.compiled:
        print(f"# compile_update: one-off compile + first rollout and update "
              f"{compiled.compile_s:.0f} s wall (not in its row)")
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    if args.cuda and torch.cuda.is_available():
        for equal in (True, False):
            r = ours_run(args.steps, equal, "cuda")
            print(f"| - | ours on cuda, {'equal work' if equal else 'shipped'} | "
                  f"{r.steps / r.wall:,.0f} | | {r.grad_steps / r.wall:,.1f} (wall) | | |")


if __name__ == "__main__":
    main()
