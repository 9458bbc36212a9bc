"""Tiny experiment configs shared by the tests that train real runs in subprocesses."""

from __future__ import annotations


def tiny_yaml(total_steps: int = 256, checkpoint_every: int = 128) -> str:
    """A tiny PPO experiment on a synthetic AR(1) market (2 envs x 64 steps per rollout)."""
    return f"""\
name: tiny
n_envs: 2
total_steps: {total_steps}
eval_every: 128
checkpoint_every: {checkpoint_every}
data: {{source: "synthetic:ar1", n_bars: 1200, embargo: 16}}
env: {{window: 16, episode_length: 48}}
model:
  d_model: 16
  window: 4
  account_hidden: 8
  net_arch: [16]
  plan: {{kind: mlkv, n_layers: 3, n_heads: 2, n_kv_heads: 1, n_kv_layers: 3}}
ppo: {{n_steps: 64, batch_size: 32, n_epochs: 2}}
"""
