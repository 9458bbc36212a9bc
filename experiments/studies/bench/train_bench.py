"""PPO training benchmark: FPS (env-steps/s including the PPO updates) on the embedded EURUSD.

In one run, same process, same machine:

* **MlpPolicy**: SB3 PPO ``MlpPolicy`` on gym-anytrading ``forex-v0`` (window 32, n_envs 1,
  n_steps 2048, batch 64), exactly as ``shared/anchors/anchor_cpu.py::ppo_fps``;
* **peer**: SB3 PPO with a ``torch.nn.TransformerEncoder`` features extractor (d 64, 4 layers,
  4 heads, norm_first, causal) over T = 128 windows of ``forex-v0`` (n_steps 512, batch 64,
  10 epochs), exactly as ``shared/anchors/peer_ppo_transformer.py``. It is slow, so it runs a
  smaller budget (one rollout + one update) and its per-step rate is reported;
* **ours**: ``MLKVPPO`` + ``MLKVActorCriticPolicy`` on ``MarketReplayVecEnv`` (T = 128), built
  by ``experiments.train.build_agent``/``make_venv`` from ``experiments/configs/eurusd_ppo.yaml``
  (reference plan mlkv 9 layers / 8 heads / 2 KV heads / new K/V every 3 layers, d_model 64,
  encoder window 32, n_envs 8, n_steps 512, batch 256, 4 epochs), on the train split;

then the ratios ours/peer and ours/MlpPolicy. Targets (issue 6): >= 20x the peer and
>= 0.5x MlpPolicy. Each figure counts the whole ``learn`` call (rollouts + updates).

gym-anytrading is not a project dependency; run in the benchmark venv::

    .venv-bench/bin/python experiments/studies/bench/train_bench.py   # 1 thread, a few min
    .venv-bench/bin/python experiments/studies/bench/train_bench.py --threads 1 2
    .venv-bench/bin/python experiments/studies/bench/train_bench.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eurusd_ppo.yaml"


def mlp_fps(total: int) -> float:
    """SB3 PPO MlpPolicy on forex-v0, window 32, n_envs 1 (anchor_cpu.py ``ppo_fps``)."""
    import gym_anytrading  # noqa: F401
    import gymnasium as gym
    from gym_anytrading.datasets import FOREX_EURUSD_1H_ASK as DF
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(
        lambda: gym.make("forex-v0", df=DF, window_size=32, frame_bound=(32, len(DF))),
        n_envs=1,
        seed=0,
    )
    m = PPO("MlpPolicy", venv, n_steps=2048, batch_size=64, seed=0, device="cpu")
    t0 = time.perf_counter()
    m.learn(total)
    return total / (time.perf_counter() - t0)


def peer_fps(total: int, window: int = 128) -> float:
    """SB3 PPO with an nn.TransformerEncoder extractor (peer_ppo_transformer.py)."""
    import gym_anytrading  # noqa: F401
    import gymnasium as gym
    from gym_anytrading.datasets import FOREX_EURUSD_1H_ASK as DF
    from stable_baselines3 import PPO
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class TfExtractor(BaseFeaturesExtractor):
        def __init__(self, space, d=64, n_layers=4, heads=4):
            super().__init__(space, d)
            self.inp = nn.Linear(space.shape[-1], d)
            layer = nn.TransformerEncoderLayer(
                d, heads, 4 * d, batch_first=True, norm_first=True, dropout=0.0
            )
            self.enc = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            mask = nn.Transformer.generate_square_subsequent_mask(space.shape[0])
            self.register_buffer("mask", mask)

        def forward(self, x):
            return self.enc(self.inp(x), mask=self.mask, is_causal=True)[:, -1]

    env = gym.make("forex-v0", df=DF, window_size=window, frame_bound=(window, len(DF)))
    m = PPO(
        "MlpPolicy",
        env,
        n_steps=512,
        batch_size=64,
        n_epochs=10,
        seed=0,
        device="cpu",
        policy_kwargs={"features_extractor_class": TfExtractor},
    )
    t0 = time.perf_counter()
    m.learn(total)
    return total / (time.perf_counter() - t0)


def ours_fps(total: int, enc_window: int, device: str = "cpu") -> float:
    """MLKVPPO on MarketReplayVecEnv, built as ``experiments.train`` builds it."""
    from experiments.config import load_config
    from experiments.factory import build_agent, load_split, make_venv

    cfg = load_config(CONFIG)
    cfg = replace(cfg, model=replace(cfg.model, window=enc_window), device=device)
    venv = make_venv(load_split(cfg.data).train, cfg)
    agent = build_agent(cfg, venv)
    t0 = time.perf_counter()
    agent.learn(total)
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=4096, help="budget of MlpPolicy and ours")
    ap.add_argument("--peer-steps", type=int, default=512, help="budget of the slow peer")
    ap.add_argument("--enc-windows", type=int, nargs="+", default=[32, 16])
    ap.add_argument("--cuda", action="store_true", help="also time ours with device='cuda'")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.peer_steps = 4096, 512
        args.enc_windows = args.enc_windows[:1]

    import numpy
    import stable_baselines3

    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"SB3 {stable_baselines3.__version__}, numpy {numpy.__version__}, "
        f"budgets: MlpPolicy/ours {args.steps} steps, peer {args.peer_steps} steps"
    )
    print("| threads | setup | FPS | ours (best W) / this |")
    print("|---|---|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        mlp = mlp_fps(args.steps)
        peer = peer_fps(args.peer_steps)
        ours = {w: ours_fps(args.steps, w) for w in args.enc_windows}
        best = max(ours.values())
        rows = [
            ("SB3 MlpPolicy, forex-v0 window 32", mlp),
            ("SB3 TransformerEncoder extractor, forex-v0 T=128", peer),
        ]
        rows += [
            (f"ours: MLKVPPO, MarketReplayVecEnv T=128, encoder W={w}", f) for w, f in ours.items()
        ]
        for name, fps in rows:
            print(f"| {threads} | {name} | {fps:,.1f} | {best / fps:,.2f}x |")
        print(f"| {threads} | **ours / peer** | | **{best / peer:,.1f}x** (target >= 20x) |")
        print(f"| {threads} | **ours / MlpPolicy** | | **{best / mlp:,.2f}x** (target >= 0.5x) |")
    if args.cuda and torch.cuda.is_available():
        for w in args.enc_windows:
            print(f"| - | ours on cuda, encoder W={w} | {ours_fps(args.steps, w, 'cuda'):,.0f} | |")


if __name__ == "__main__":
    main()
