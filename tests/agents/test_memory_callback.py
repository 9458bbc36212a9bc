"""MemoryUsageCallback: logs the memory layers' slot share and read entropy, then resets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger

from agents import MLKVPPO, MLKVActorCriticPolicy
from agents.memory_callback import MemoryUsageCallback
from data import synthetic
from envs import EnvConfig, MarketReplayVecEnv

CANDLES = synthetic.ar1(600, phi=0.3, seed=0)
ENV_CONFIG = EnvConfig(window=8, episode_length=24)
MEMORY = {"n_keys": 8, "k": 3, "heads": 2, "k_dim": 8}  # 64 slots
F = MarketReplayVecEnv(CANDLES, ENV_CONFIG, n_envs=1).features.shape[1]  # features per bar


class Capture(KVWriter):
    """A logger output that keeps every dump."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: Any, step: int = 0) -> None:
        self.dumps.append(dict(key_values))


def make(encoder: dict[str, Any], cls: type[PPO] = MLKVPPO, **kw: Any) -> tuple[PPO, Capture]:
    env = MarketReplayVecEnv(CANDLES, ENV_CONFIG, n_envs=3, seed=7)
    model = cls(
        MLKVActorCriticPolicy,
        env,
        policy_kwargs={"encoder": encoder, **kw},
        n_steps=40,
        batch_size=20,
        n_epochs=2,
        seed=1,
    )
    capture = Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    return model, capture


def with_memory(tiny_encoder: dict[str, Any], layers=(1,)) -> dict[str, Any]:
    return {**tiny_encoder, "memory_layers": list(layers), "memory": MEMORY}


def test_rollout_end_logs_the_usage_and_resets_the_counters(tiny_encoder) -> None:
    model, _ = make(with_memory(tiny_encoder, layers=(0, 2)))
    callback = MemoryUsageCallback()
    callback.init_callback(model)
    encoder = model.policy.features_extractor.encoder
    assert list(callback.encoders.values()) == [encoder]
    with th.no_grad():
        encoder.encode_series(th.randn(2, 30, F))
    expected = encoder.memory_usage()
    assert expected[0].reads == 2 * 30 * 2 * 3
    callback.on_rollout_end()
    logged = model.logger.name_to_value
    for layer in (0, 2):
        assert logged[f"memory/layer{layer}_slot_share"] == expected[layer].slot_share
        assert logged[f"memory/layer{layer}_read_entropy"] == expected[layer].read_entropy
        ratio = expected[layer].read_entropy_ratio
        assert logged[f"memory/layer{layer}_read_entropy_ratio"] == ratio
        assert 0 < expected[layer].slot_share <= 1 and 0 < ratio <= 1
    assert all(u.reads == 0 for u in encoder.memory_usage().values())  # reset


def test_training_logs_memory_usage_every_rollout(tiny_encoder, tmp_path) -> None:
    model, capture = make(with_memory(tiny_encoder))
    model.learn(3 * 40 * 3, callback=[MemoryUsageCallback()])
    rollouts = [d for d in capture.dumps if "time/iterations" in d]
    assert len(rollouts) == 3
    for d in rollouts:
        assert 0 < d["memory/layer1_slot_share"] <= 1
        assert 0 < d["memory/layer1_read_entropy"] <= math.log(64)
        assert 0 < d["memory/layer1_read_entropy_ratio"] <= 1
    # the memory policy saves and loads through SB3 (its encoder config is JSON-friendly)
    obs = model.env.reset()
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "m.zip")
    loaded = MLKVPPO.load(tmp_path / "m.zip", env=model.env)
    assert loaded.policy.features_extractor.encoder.config.memory_layers == (1,)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], action, atol=1e-6)


def test_separate_actor_and_critic_encoders_get_their_own_keys(tiny_encoder) -> None:
    model, _ = make(with_memory(tiny_encoder), share_features_extractor=False)
    callback = MemoryUsageCallback()
    callback.init_callback(model)
    assert set(callback.encoders) == {"memory/features_extractor/", "memory/vf_features_extractor/"}
    with th.no_grad():
        for enc in callback.encoders.values():
            enc.encode_series(th.randn(1, 10, F))
    callback.on_rollout_end()
    assert "memory/vf_features_extractor/layer1_slot_share" in model.logger.name_to_value


@pytest.mark.parametrize("memory", [False, True])
def test_nothing_is_logged_without_memory_layers_or_reads(tiny_encoder, memory) -> None:
    model, _ = make(with_memory(tiny_encoder) if memory else tiny_encoder)
    callback = MemoryUsageCallback()
    callback.init_callback(model)
    assert bool(callback.encoders) == memory
    callback.on_rollout_end()  # no reads since the last reset: nothing to report
    assert not any(k.startswith("memory/") for k in model.logger.name_to_value)


def test_fast_rollout_with_memory_layers_equals_sb3_rollout(tiny_encoder) -> None:
    """The memory is per token: MLKVPPO's encoded-bar rollout still equals SB3's windows."""
    buffers = []
    for cls in (PPO, MLKVPPO):
        model, _ = make(with_memory(tiny_encoder, layers=(0, 2)), cls=cls)
        _, callback = model._setup_learn(model.n_steps * model.n_envs)
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        buffers.append(model.rollout_buffer)
    for name in ("actions", "log_probs", "values"):
        a, b = (getattr(buf, name) for buf in buffers)
        np.testing.assert_allclose(b, a, atol=2e-5, err_msg=name)
