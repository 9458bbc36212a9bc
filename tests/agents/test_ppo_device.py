"""MLKVPPO as it would run on an accelerator, proven on the CPU.

* a rollout step moves data from the device to the host once (the actions for the env, with
  the values, log-probs and sigmas packed alongside);
* under bf16 autocast the first epoch of an update sees ratio 1: the rollout and the update
  encode a bar in different spans (other absolute positions), and fp32 rotary positions
  and attention make that invisible;
* sparse memory gradients are refused with an error that says how to fix the config.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th

from agents import MLKVPPO, MLKVActorCriticPolicy
from data import synthetic
from envs import EnvConfig, MarketReplayVecEnv
from experiments.config import config_from_dict
from experiments.schema import ConfigError

ENV_CONFIG = EnvConfig(window=8, episode_length=24)  # truncations inside a 40-step rollout
CANDLES = synthetic.ar1(600, phi=0.3, seed=0)
N_STEPS = 40

def make_model(encoder: dict[str, Any], **kw: Any) -> MLKVPPO:
    venv = MarketReplayVecEnv(CANDLES, ENV_CONFIG, n_envs=3, seed=7)
    return MLKVPPO(
        MLKVActorCriticPolicy, venv, n_steps=N_STEPS, batch_size=20, n_epochs=1, seed=1,
        policy_kwargs={"encoder": encoder}, **kw,
    )


def rollout(model: MLKVPPO) -> MLKVPPO:
    _, callback = model._setup_learn(model.n_steps * model.n_envs)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    return model


def test_a_rollout_step_moves_data_to_the_host_once(tiny_encoder, host_transfers):
    model = make_model(tiny_encoder)
    model._setup_learn(model.n_steps * model.n_envs)
    with host_transfers() as transfers:
        rollout(model)
    assert model.rollout_buffer.episode_starts[1:].sum() >= 2  # truncations were bootstrapped
    # one per step, plus once per rollout: the bootstrap values and the last values
    assert transfers.count <= N_STEPS + 2, transfers.count


def test_the_transfer_counter_sees_every_kind_of_transfer(host_transfers):
    """Sharpness: each way of reading a tensor on the host is counted."""
    t, u = th.ones(3), th.ones(3)
    with host_transfers() as transfers:
        t.cpu().numpy()  # one transfer, not two
        u.numpy()
        float(t[0])
        t.tolist()
        t.to("cpu")
        t[0].item()
        bool(t[0])
    assert transfers.count == 7


def test_bf16_first_epoch_ratio_is_one_on_a_fresh_rollout(monkeypatch):
    """The update's first evaluation of a fresh rollout reproduces its log-probs (ratio 1)."""
    encoder = {
        "d_model": 32,
        "window": 4,
        "plan": {"kind": "mlkv", "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "n_kv_layers": 2},
        "autocast_bf16": True,
    }
    model = rollout(make_model(encoder, segment_len=7))
    policy = model.policy
    policy.set_training_mode(True)
    with th.no_grad():
        for p in policy.features_extractor.encoder.parameters():  # sharp weights: rounding
            p.add_(0.2 * th.randn_like(p))  # differences would show (rollout reused below)
    model = rollout(model)
    policy.set_training_mode(True)
    np.random.seed(0)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
    worst = 0.0
    with th.no_grad():  # the encoder runs under torch.autocast("cpu", torch.bfloat16)
        for data in model.rollout_buffer.get(model.batch_size):
            _, log_prob, _ = policy.evaluate_actions(data.observations, data.actions)
            ratio = th.exp(log_prob - data.old_log_prob)
            worst = max(worst, float((ratio - 1).abs().max()))
    # the bound asked for is 1e-3; measured 5e-7. With bf16 rotary tables and rotation
    # (before issue 17) this test measured 3e-4: a 1e-4 bound tells the two apart.
    assert worst < 1e-4, worst


def test_sparse_memory_gradients_are_a_config_error_that_names_the_key():
    fix = r"model\.memory\.sparse_grad: .*Adam.*sparse_grad: false"
    with pytest.raises(ConfigError, match=fix):
        config_from_dict({"model": {"memory_layers": [4], "memory": {"sparse_grad": True}}})
    config_from_dict({"model": {"memory_layers": [4], "memory": {"sparse_grad": False}}})


def test_the_policy_refuses_sparse_memory_gradients(tiny_encoder):
    memory = {"n_keys": 4, "k": 2, "heads": 1, "k_dim": 4, "sparse_grad": True}
    encoder = {**tiny_encoder, "memory_layers": (1,), "memory": memory}
    with pytest.raises(ValueError, match=r"memory\.sparse_grad=False .*model\.memory\.sparse_grad"):
        make_model(encoder)
