"""MLKVExtractor and MLKVActorCriticPolicy: shapes, sigma, and the encoded-bar paths."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.utils import ConstantSchedule
from torch.testing import assert_close

from agents import LOG_STD_RANGE, MLKVActorCriticPolicy, MLKVExtractor
from agents.actor import stack_actors
from models import EncoderConfig, KVSharingPlan

ACTION = spaces.Box(-1.0, 1.0, (1,), np.float32)


def make_policy(space: spaces.Dict, encoder: Any, **kwargs: Any) -> MLKVActorCriticPolicy:
    th.manual_seed(0)
    return MLKVActorCriticPolicy(space, ACTION, ConstantSchedule(3e-4), encoder=encoder, **kwargs)


def sample_windows(features: np.ndarray, bars: np.ndarray, T: int) -> th.Tensor:
    """Reference slicing: ``[len(bars), T, F]`` windows ending at ``bars``."""
    return th.as_tensor(np.stack([features[b - T + 1 : b + 1] for b in bars]))


def random_features(n_bars: int, F: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_bars, F)).astype(np.float32)


# ---------------------------------------------------------------------- extractor
@pytest.mark.parametrize("hidden, expected", [((32,), 16 + 32), (8, 16 + 8), ((), 16 + 2)])
def test_extractor_features_dim_and_shape(dict_space, tiny_encoder, hidden, expected) -> None:
    ext = MLKVExtractor(dict_space(), encoder=tiny_encoder, account_hidden=hidden)
    obs = {"candles": th.randn(5, 8, 3), "account": th.randn(5, 2)}
    assert ext.features_dim == expected
    assert ext(obs).shape == (5, expected)


def test_extractor_accepts_config_dict_and_plan_object(dict_space, tiny_encoder) -> None:
    plan = KVSharingPlan.mlkv(3, 2, 1, 2)
    from_cfg = MLKVExtractor(dict_space(), encoder=EncoderConfig(3, 16, plan, window=4))
    from_obj = MLKVExtractor(dict_space(), encoder={**tiny_encoder, "plan": plan})
    from_dict = MLKVExtractor(dict_space(), encoder=tiny_encoder)
    assert from_cfg.config == from_obj.config == from_dict.config
    assert from_dict.receptive_field == 7


def test_extractor_rejects_window_shorter_than_receptive_field(dict_space, tiny_encoder) -> None:
    with pytest.raises(ValueError, match=r"T = 6 bars but the encoder's receptive field is 7"):
        MLKVExtractor(dict_space(T=6), encoder=tiny_encoder)


def test_extractor_rejects_wrong_n_features_and_bad_space(dict_space, tiny_encoder) -> None:
    with pytest.raises(ValueError, match="n_features = 5 disagrees"):
        MLKVExtractor(dict_space(), encoder={**tiny_encoder, "n_features": 5})
    with pytest.raises(ValueError, match=r"unknown|unexpected"):
        MLKVExtractor(dict_space(), encoder={**tiny_encoder, "heads": 4})
    with pytest.raises(ValueError, match="needs observations Dict"):
        MLKVExtractor(spaces.Box(-1, 1, (8, 3)), encoder=tiny_encoder)  # type: ignore[arg-type]


def test_window_path_uses_only_the_receptive_field(dict_space, tiny_encoder) -> None:
    """The last token of a T-bar window equals encode_series over the whole series."""
    ext = MLKVExtractor(dict_space(T=12), encoder=tiny_encoder)
    feats = random_features(40, 3)
    bars = np.arange(11, 40)
    with th.no_grad():
        by_window = ext.encode_windows(sample_windows(feats, bars, 12))
        full = ext.encoder(sample_windows(feats, bars, 12))[:, -1]
        series = ext.encode_bars(th.as_tensor(feats))[bars]
    assert_close(by_window, full, atol=1e-5, rtol=1e-5)
    assert_close(by_window, series, atol=1e-5, rtol=1e-5)


def test_encode_spans_matches_windows_and_fails_without_context(dict_space, tiny_encoder) -> None:
    ext = MLKVExtractor(dict_space(T=8), encoder=tiny_encoder)
    feats = th.as_tensor(random_features(60, 3))
    starts, lengths = np.array([7, 30, 52]), np.array([5, 9, 8])  # the last one ends at bar 59
    with th.no_grad():
        spans = ext.encode_spans(feats, starts, lengths)  # [3, 9, D]
        short = ext.encode_spans(feats, starts, lengths, context=ext.receptive_field - 2)
        for s, (b0, n) in enumerate(zip(starts, lengths, strict=True)):
            ref = ext.encode_windows(sample_windows(feats.numpy(), np.arange(b0, b0 + n), 8))
            assert_close(spans[s, :n], ref, atol=1e-5, rtol=1e-5)
            with pytest.raises(AssertionError):
                assert_close(short[s, :n], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fewer than 6 bars of context"):
        ext.encode_spans(feats, np.array([3]), np.array([2]))



def test_encode_packed_matches_encode_spans_and_fails_without_context(
    dict_space, tiny_encoder
) -> None:
    """Spans packed end to end in one row give the padded per-span rows, and a context one
    bar short does not (the packed neighbour would leak into the first bar of a span)."""
    ext = MLKVExtractor(dict_space(T=8), encoder=tiny_encoder)
    feats = th.as_tensor(random_features(60, 3))
    starts, lengths = np.array([7, 30, 52, 20]), np.array([5, 9, 8, 1])
    with th.no_grad():
        spans = ext.encode_spans(feats, starts, lengths)  # [4, 9, D]
        packed = ext.encode_packed(feats, starts, lengths)  # [23, D]
        short = ext.encode_packed(feats, starts, lengths, context=ext.receptive_field - 2)
    ref = th.cat([spans[s, :n] for s, n in enumerate(lengths)])  # [23, D]
    assert packed.shape == ref.shape == (int(lengths.sum()), ext.encoding_dim)
    assert_close(packed, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):
        assert_close(short, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fewer than 6 bars of context"):
        ext.encode_packed(feats, np.array([3]), np.array([2]))


@pytest.mark.parametrize(
    ("starts", "lengths", "path"),
    [
        ([7, 30, 52], [6, 6, 6], "encode_spans"),  # equal spans: rows, context trimmed
        ([7], [40], "encode_spans"),
        ([7, 30, 52, 20, 40], [2, 21, 8, 1, 3], "encode_packed"),  # unequal: packed
    ],
)
def test_encode_samples_takes_the_cheaper_pass_and_matches_windows(
    dict_space, tiny_encoder, monkeypatch, starts, lengths, path
) -> None:
    ext = MLKVExtractor(dict_space(T=8), encoder=tiny_encoder)
    feats = th.as_tensor(random_features(60, 3))
    starts, lengths = np.array(starts), np.array(lengths)
    calls = []
    for name in ("encode_spans", "encode_packed"):
        method = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _m=method, _n=name, **k: (
            calls.append(_n), _m(*a, **k))[1])
    with th.no_grad():
        got = ext.encode_samples(feats, starts, lengths)  # [M, D]
        bars = np.concatenate([np.arange(b, b + n) for b, n in zip(starts, lengths, strict=True)])
        ref = ext.encode_windows(sample_windows(feats.numpy(), bars, 8))  # [M, D]
        short = ext.encode_samples(feats, starts, lengths, context=ext.receptive_field - 2)
    assert calls[0] == path
    assert got.shape == ref.shape
    assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):
        assert_close(short, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- policy heads
def test_sigma_is_state_dependent_and_starts_at_log_std_init(dict_space, tiny_encoder) -> None:
    policy = make_policy(dict_space(), tiny_encoder, log_std_init=-1.0)
    obs = {"candles": th.randn(64, 8, 3), "account": th.randn(64, 2)}
    mean, sigma = policy.action_stats(obs)
    assert mean.shape == sigma.shape == (64, 1)
    assert_close(sigma.log(), th.full_like(sigma, -1.0), atol=0.05, rtol=0)  # small head init
    assert sigma.std() > 0  # differs between states
    with th.no_grad():  # an extreme head still lands inside the documented range
        policy.log_sigma_net.weight.mul_(1e4)
    _, sigma = policy.action_stats(obs)
    lo, hi = LOG_STD_RANGE
    assert (sigma.log() >= lo - 1e-5).all() and (sigma.log() <= hi + 1e-5).all()
    assert sigma.log().min() < lo + 0.5 and sigma.log().max() > hi - 0.5


def test_log_std_range_and_init_are_validated(dict_space, tiny_encoder) -> None:
    with pytest.raises(ValueError, match=r"log_std_init = 2\.0 must lie strictly inside"):
        make_policy(dict_space(), tiny_encoder, log_std_init=2.0)
    with pytest.raises(ValueError, match="use_sde=True is not supported"):
        make_policy(dict_space(), tiny_encoder, use_sde=True)
    with pytest.raises(ValueError, match="1-D Box action space"):
        MLKVActorCriticPolicy(
            dict_space(), spaces.Discrete(3), ConstantSchedule(3e-4), encoder=tiny_encoder
        )


def test_predict_deterministic_returns_clipped_mean(dict_space, tiny_encoder) -> None:
    policy = make_policy(dict_space(), tiny_encoder)
    with th.no_grad():
        policy.action_net.bias.fill_(0.7)
    obs = {"candles": np.random.default_rng(1).standard_normal((6, 8, 3)).astype(np.float32),
           "account": np.zeros((6, 2), np.float32)}
    mean, _ = policy.action_stats(obs)
    action, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_allclose(action, np.clip(mean.numpy(), -1, 1), atol=1e-6)
    with th.no_grad():
        policy.action_net.bias.fill_(5.0)
    action, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action, np.ones((6, 1), np.float32))
    stochastic = np.stack([policy.predict(obs)[0] for _ in range(3)])
    assert (stochastic <= 1).all() and (stochastic >= -1).all()


@pytest.mark.parametrize("shared", [True, False])
def test_heads_from_encoded_match_the_window_path(dict_space, tiny_encoder, shared) -> None:
    """encode_bars once + heads_from_encoded == SB3's forward on every window."""
    policy = make_policy(dict_space(T=8), tiny_encoder, share_features_extractor=shared)
    feats = random_features(50, 3, seed=2)
    bars = np.arange(7, 50)
    account = th.randn(len(bars), 2)
    obs = {"candles": sample_windows(feats, bars, 8), "account": account}
    with th.no_grad():
        encoded = policy.encode_bars(feats)  # [50, D or 2D]
        mean, log_sigma, value = policy.heads_from_encoded(encoded[bars], account)
        ref_mean, ref_sigma = policy.action_stats(obs)
        ref_value = policy.predict_values(obs)
    assert encoded.shape == (50, 16 if shared else 32)
    assert_close(mean, ref_mean, atol=1e-5, rtol=1e-5)
    assert_close(log_sigma.exp(), ref_sigma, atol=1e-5, rtol=1e-5)
    assert_close(value, ref_value[:, 0], atol=1e-5, rtol=1e-5)
    assert value.shape == (len(bars),)


def stacked_policies(dict_space, tiny_encoder, n: int, **kwargs: Any) -> list[Any]:
    """``n`` policies with different weights (seeds 0 .. n-1), same shapes."""
    policies = []
    for seed in range(n):
        th.manual_seed(seed)
        policies.append(MLKVActorCriticPolicy(dict_space(T=8), ACTION, ConstantSchedule(3e-4),
                                              encoder=tiny_encoder, **kwargs))
    return policies


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("activation", [th.nn.Tanh, th.nn.ReLU])
@pytest.mark.parametrize("account_hidden", [(32,), ()])
def test_stacked_actor_equals_each_module_path(
    dict_space, tiny_encoder, shared, activation, account_hidden
) -> None:
    """The backtest's stacked actor: each policy's mean and log-sigma as its module path
    computes them, and, exactly, the same floats alone as in a stack of three (a distributed
    backtest runs one policy per task, the in-process one stacks them)."""
    policies = stacked_policies(dict_space, tiny_encoder, 3, share_features_extractor=shared,
                                activation_fn=activation, account_hidden=account_hidden)
    feats = random_features(50, 3, seed=2)
    account = th.randn(3, 43, 2)
    with th.no_grad():
        rows = th.stack([p.encode_bars(feats)[7:] for p in policies])  # [3, 43, D]
        mean, log_sigma = stack_actors([p.actor_program() for p in policies])(rows, account)
        for i, policy in enumerate(policies):
            ref_mean, ref_log_sigma = policy.actor_from_encoded(rows[i], account[i])
            assert_close(mean[i], ref_mean, rtol=1e-6, atol=1e-6)
            assert_close(log_sigma[i], ref_log_sigma, rtol=1e-6, atol=1e-6)
            alone = stack_actors([policy.actor_program()])(rows[i : i + 1], account[i : i + 1])
            assert th.equal(alone[0][0], mean[i]) and th.equal(alone[1][0], log_sigma[i])
        assert not th.equal(mean[0], mean[1])  # sharp: other weights, other outputs


def test_stacked_actor_copies_the_weights_it_was_built_from(dict_space, tiny_encoder) -> None:
    policy = make_policy(dict_space(T=8), tiny_encoder)
    rows, account = th.randn(1, 5, tiny_encoder["d_model"]), th.randn(1, 5, 2)
    with th.no_grad():
        actor = stack_actors([policy.actor_program()])
        before = actor(rows, account)[0]
        policy.action_net.bias.add_(1.0)
        assert th.equal(actor(rows, account)[0], before)  # built before: old weights
        assert_close(stack_actors([policy.actor_program()])(rows, account)[0], before + 1.0)


def test_stack_actors_declines_what_it_cannot_batch(dict_space, tiny_encoder) -> None:
    assert make_policy(dict_space(T=8), tiny_encoder, activation_fn=th.nn.SiLU).actor_program() \
        is None
    wide, narrow = (make_policy(dict_space(T=8), tiny_encoder, net_arch=dict(pi=[w], vf=[8]))
                    for w in (16, 8))
    assert stack_actors([wide.actor_program(), narrow.actor_program()]) is None  # shapes differ
    assert stack_actors([wide.actor_program(), None]) is None
    assert stack_actors([wide.actor_program(), wide.actor_program()]) is not None


def test_transformer_keeps_its_own_init_under_ortho_init(dict_space, tiny_encoder) -> None:
    policy = make_policy(dict_space(), tiny_encoder, ortho_init=True)
    w = policy.features_extractor.encoder.inp.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.3)  # GPT-2 init, not orthogonal * sqrt(2)
