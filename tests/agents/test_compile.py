"""torch.compile over a training run: a bounded number of graphs, never the recompile limit.

Run with ``backend="eager"``: dynamo traces, guards and counts graphs exactly as it would for
inductor (or CUDA graphs), without generating code, so the test is cheap on a CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch._dynamo.utils import counters

import models.encoder
from agents import MLKVPPO, MLKVActorCriticPolicy
from data import synthetic
from envs import EnvConfig, MarketReplayVecEnv
from evaluation.passes import run_policy_passes
from models import EncoderConfig, KVSharingPlan, MLKVEncoder, PKMConfig

ENV_CONFIG = EnvConfig(window=8, episode_length=24)  # resets: many span lengths per rollout
CANDLES = synthetic.ar1(600, phi=0.3, seed=0)
#: graphs that four rollouts + four PPO updates + a backtest compile with the tiny encoder
#: (W = 4, receptive field 7; measured: 7). Rollout spans need 2..12 blocks, bucketed to 2,
#: 4, 8, 16 (series_infer), update segments 4..7 blocks -> 4, 8 (series_grad), the 150-bar
#: backtest 38 -> 40 blocks (series_infer). Unbucketed, series_infer alone needs 9 graphs.
MAX_GRAPHS = 8


@pytest.fixture
def eager_dynamo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Compile with the eager backend, fail on the recompile limit, count from zero."""
    monkeypatch.setattr(MLKVEncoder, "compile_backend", "eager")
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def train_and_backtest(tiny_encoder: dict[str, Any]) -> MLKVPPO:
    venv = MarketReplayVecEnv(CANDLES, ENV_CONFIG, n_envs=3, seed=7)
    encoder = {**tiny_encoder, "compile": "default"}
    model = MLKVPPO(
        MLKVActorCriticPolicy,
        venv,
        n_steps=40,
        batch_size=20,
        n_epochs=1,
        seed=1,
        segment_len=20,
        rollout_chunk=40,
        policy_kwargs={"encoder": encoder},
    )
    model.learn(4 * 40 * 3)  # four rollouts and updates: episodes end at a new step each time
    run_policy_passes(
        model.policy, CANDLES[-150:], ENV_CONFIG, n_passes=2, deterministic=True, seed=0
    )
    return model


def test_a_training_run_compiles_a_bounded_number_of_graphs(tiny_encoder, eager_dynamo):
    train_and_backtest(tiny_encoder)
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= MAX_GRAPHS
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow
def test_without_length_buckets_the_run_hits_the_recompile_limit(
    tiny_encoder, eager_dynamo, monkeypatch
):
    """Sharpness: one graph per block count is what the buckets prevent."""
    monkeypatch.setattr(models.encoder, "series_blocks", lambda nb, chunk_blocks: nb)
    with pytest.raises(FailOnRecompileLimitHit):
        train_and_backtest(tiny_encoder)


def test_compiled_encoder_equals_eager_on_every_bucket(make_tiny_encoder_pair, eager_dynamo):
    compiled, eager = make_tiny_encoder_pair
    for B, N in [(3, 10), (1, 10), (5, 13), (2, 30), (1, 100), (4, 7)]:
        x = torch.randn(B, N, 5)
        with torch.no_grad():
            torch.testing.assert_close(compiled.encode_series(x), eager.encode_series(x))
        torch.testing.assert_close(compiled(x), eager(x).detach())
    assert counters["stats"]["unique_graphs"] == 2 * 4  # buckets 2, 4, 8, 32; grad and not
    # the memory counts the reads of real bars of real rows only, padded or not
    assert compiled.memory_usage()[1].reads == eager.memory_usage()[1].reads > 0


@pytest.fixture
def make_tiny_encoder_pair() -> tuple[MLKVEncoder, MLKVEncoder]:
    """The same tiny encoder (with a memory layer) compiled and eager."""
    spec = {
        "n_features": 5,
        "d_model": 16,
        "plan": KVSharingPlan.mlkv(3, 2, 1, 2),
        "window": 4,
        "memory_layers": (1,),
        "memory": PKMConfig(n_keys=8, k=3, heads=2, k_dim=8),
    }
    torch.manual_seed(0)
    compiled = MLKVEncoder(EncoderConfig(**spec, compile="default")).eval()
    eager = MLKVEncoder(EncoderConfig(**spec)).eval()
    eager.load_state_dict(compiled.state_dict())
    return compiled, eager


def test_reduce_overhead_pads_the_batch_to_a_power_of_two(make_tiny_encoder_pair, eager_dynamo,
                                                           monkeypatch):
    """CUDA graphs are recorded per batch size: under reduce-overhead sizes are few."""
    compiled, eager = make_tiny_encoder_pair
    compiled.config = dataclasses.replace(compiled.config, compile="reduce-overhead")
    seen = []
    real = compiled._series_infer
    monkeypatch.setattr(compiled, "_series_infer", lambda x, *a: seen.append(len(x)) or real(x, *a))
    with torch.no_grad():
        for B in (1, 2, 3, 5, 8):
            x = torch.randn(B, 10, 5)
            torch.testing.assert_close(compiled.encode_series(x), eager.encode_series(x))
    assert seen == [2, 2, 4, 8, 8]
    assert compiled.memory_usage()[1].reads == eager.memory_usage()[1].reads > 0
