"""A validation pass leaves the global RNGs alone: training seeds keep their own noise."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from data import synthetic
from envs import EnvConfig
from experiments.train import validation_return
from tests.evaluation.conftest import make_policy

ENV = EnvConfig(window=16, episode_length=64)


def _validate() -> None:
    agent = SimpleNamespace(policy=make_policy_once())
    validation_return(agent, synthetic.gbm(120, seed=3), ENV)


_POLICY = None


def make_policy_once():
    global _POLICY
    if _POLICY is None:
        state = torch.get_rng_state()
        _POLICY = make_policy(0)
        torch.set_rng_state(state)
    return _POLICY


def test_a_validation_pass_leaves_global_rng_state_unchanged():
    make_policy_once()
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 (the legacy global state is what must not move)
    random.seed(123)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002
    py_state = random.getstate()
    _validate()
    assert torch.equal(torch.get_rng_state(), torch_state)
    np_after = np.random.get_state()  # noqa: NPY002
    assert np_after[0] == np_state[0] and np.array_equal(np_after[1], np_state[1])
    assert random.getstate() == py_state


def test_two_training_seeds_explore_differently_after_a_validation_pass():
    make_policy_once()
    draws = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.randn(3)  # some exploration before the validation
        _validate()
        draws[seed] = torch.randn(8)
    assert not torch.equal(draws[1], draws[2])  # a shared reset would make them equal
    torch.manual_seed(1)
    torch.randn(3)
    torch.testing.assert_close(draws[1], torch.randn(8))  # as if no validation ran
