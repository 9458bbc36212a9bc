"""MLKVPPO: fast rollouts and fast updates equal SB3's window path; drop-in PPO behaviour."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from torch.testing import assert_close

from agents import (
    MLKVPPO,
    BarRolloutBuffer,
    MLKVActorCriticPolicy,
    MLKVExtractor,
    PlainPathWarning,
    SegmentObs,
)
from agents.ppo import normalize_rollout_advantages
from data import synthetic
from envs import EnvConfig, MarketReplayEnv, MarketReplayVecEnv
from models import EncoderConfig, KVSharingPlan

T = 8  # observation window; the tiny encoder's receptive field is 7
ENV_CONFIG = EnvConfig(window=T, episode_length=24)  # several resets per 40-step rollout
CANDLES = synthetic.ar1(600, phi=0.3, seed=0)
PPO_KW: dict[str, Any] = {"n_steps": 40, "batch_size": 20, "n_epochs": 2, "seed": 1}


def venv(n_envs: int = 3, seed: int = 7) -> MarketReplayVecEnv:
    return MarketReplayVecEnv(CANDLES, ENV_CONFIG, n_envs=n_envs, seed=seed)


def dummy_venv(n_envs: int = 2) -> DummyVecEnv:
    return DummyVecEnv([lambda: MarketReplayEnv(CANDLES, ENV_CONFIG)] * n_envs)


def make(cls: type[PPO], env: VecEnv, encoder: dict[str, Any], **kw: Any) -> PPO:
    return cls(MLKVActorCriticPolicy, env, policy_kwargs={"encoder": encoder}, **{**PPO_KW, **kw})


def one_rollout(model: PPO) -> PPO:
    _, callback = model._setup_learn(model.n_steps * model.n_envs)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    return model


def params(model: PPO) -> dict[str, th.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


class HideBars(VecEnvWrapper):
    """A VecEnv that does not expose ``features`` / ``bar_index`` (like any other env)."""

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        return self.venv.step_wait()

    def __getattr__(self, name: str) -> Any:
        if name in ("features", "bar_index"):
            raise AttributeError(name)
        return super().__getattr__(name)

    def get_attr(self, name: str, indices: Any = None) -> list[Any]:
        if name in ("features", "bar_index"):
            raise AttributeError(name)
        return self.venv.get_attr(name, indices)


# ---------------------------------------------------------------------- fast rollouts
@pytest.mark.parametrize("make_env, chunk", [(venv, 256), (venv, 8), (dummy_venv, 16)])
def test_fast_rollout_equals_sb3_rollout(tiny_encoder, make_env, chunk) -> None:
    """Same seeds: same actions, log-probs, values, rewards, advantages as SB3's PPO."""
    plain = one_rollout(make(PPO, make_env(), tiny_encoder))
    fast = one_rollout(make(MLKVPPO, make_env(), tiny_encoder, rollout_chunk=chunk))
    a, b = plain.rollout_buffer, fast.rollout_buffer
    assert isinstance(a, DictRolloutBuffer) and isinstance(b, BarRolloutBuffer)
    assert a.episode_starts[1:].sum() >= 2  # the rollout crossed resets (and truncations)
    for name in ("actions", "log_probs", "values", "rewards", "advantages", "returns"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=2e-5, err_msg=name)
    np.testing.assert_array_equal(b.episode_starts, a.episode_starts)
    np.testing.assert_allclose(b.observations["account"], a.observations["account"], atol=2e-5)
    features = fast.env.get_attr("features")[0] if make_env is dummy_venv else fast.env.features
    rebuilt = features[b.bar_index[..., None] + np.arange(-T + 1, 1)]  # [n_steps, n_envs, T, F]
    np.testing.assert_array_equal(rebuilt, a.observations["candles"])
    assert (b.sigmas > 0).all()


def test_plain_path_warns_once_and_still_learns(tiny_encoder) -> None:
    model = make(MLKVPPO, HideBars(venv()), tiny_encoder)
    with pytest.warns(PlainPathWarning, match="no `features` attribute") as record:
        model.learn(2 * 40 * 3)
    assert len(record) == 1
    assert type(model.rollout_buffer) is DictRolloutBuffer


def test_normalized_observations_fall_back_to_plain_path(tiny_encoder) -> None:
    model = make(MLKVPPO, VecNormalize(venv(), norm_reward=False), tiny_encoder)
    with pytest.warns(PlainPathWarning, match="not the slices of env.features"):
        model.learn(40 * 3)
    assert type(model.rollout_buffer) is DictRolloutBuffer


def test_fast_rollout_off_is_silent_and_plain(tiny_encoder) -> None:
    model = make(MLKVPPO, venv(), tiny_encoder, fast_rollout=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlainPathWarning)
        model.learn(40 * 3)
    assert type(model.rollout_buffer) is DictRolloutBuffer


# ---------------------------------------------------------------------- fast updates
def ppo_loss(policy: MLKVActorCriticPolicy, data: Any, obs: Any) -> th.Tensor:
    """PPO's clipped loss (as in SB3's ``PPO.train``) for one minibatch."""
    values, log_prob, entropy = policy.evaluate_actions(obs, data.actions)
    adv = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
    ratio = th.exp(log_prob - data.old_log_prob)
    policy_loss = -th.min(adv * ratio, adv * th.clamp(ratio, 0.8, 1.2)).mean()
    return policy_loss + 0.5 * F.mse_loss(data.returns, values.flatten()) - 0.01 * entropy.mean()


def loss_and_grads(policy: MLKVActorCriticPolicy, data: Any, obs: Any) -> dict[str, th.Tensor]:
    policy.zero_grad()
    loss = ppo_loss(policy, data, obs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), **grads}


@pytest.mark.parametrize("shared", [True, False])
def test_segment_update_equals_window_update(tiny_encoder, shared) -> None:
    """Per minibatch: the same loss and gradients from segments as from T-bar windows,
    and not with a context shorter than the receptive field."""
    model = make(MLKVPPO, venv(), tiny_encoder, segment_len=8)
    if not shared:
        model = MLKVPPO(
            MLKVActorCriticPolicy, venv(), segment_len=8, **PPO_KW,
            policy_kwargs={"encoder": tiny_encoder, "share_features_extractor": False},
        )
    one_rollout(model)
    model.train()  # move the weights off the rollout's, so ratios and clipping matter
    policy = model.policy
    policy.set_training_mode(True)
    np.random.seed(0)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
    batches = list(model.rollout_buffer.get(model.batch_size))
    assert all(isinstance(b.observations, SegmentObs) for b in batches)
    assert any(len(b.observations.lengths) > 1 for b in batches)
    for data in batches:
        fast = loss_and_grads(policy, data, data.observations)
        plain = loss_and_grads(policy, data, data.observations.as_windows())
        assert fast.keys() == plain.keys() and len(fast) == len(list(policy.parameters())) + 1
        for name in fast:
            assert_close(fast[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    # the check has teeth: one bar of context too few changes values and gradients
    data = batches[0]
    short = dataclasses.replace(data.observations, context=policy.receptive_field - 2)
    wrong = loss_and_grads(policy, data, short)
    plain = loss_and_grads(policy, data, data.observations.as_windows())
    encoder_grads = [n for n in plain if "encoder" in n]
    with pytest.raises(AssertionError):
        for name in encoder_grads:
            assert_close(wrong[name], plain[name], atol=1e-5, rtol=1e-4)
    with th.no_grad():
        values_fast = policy.evaluate_actions(data.observations, data.actions)[0]
        values_short = policy.evaluate_actions(short, data.actions)[0]
        values_plain = policy.evaluate_actions(data.observations.as_windows(), data.actions)[0]
    # only the first bar of each piece misses a bar, so the error is small but far above
    # float rounding
    assert (values_fast - values_plain).abs().max() < 1e-6
    assert (values_short - values_plain).abs().max() > 1e-5


def test_segment_training_epoch_equals_window_training_epoch(tiny_encoder) -> None:
    """A whole ``train()`` (clipping, grad-norm, Adam) gives the same weights either way."""
    model = one_rollout(make(MLKVPPO, venv(), tiny_encoder, segment_len=8))
    start_policy = copy.deepcopy(model.policy.state_dict())
    start_optim = copy.deepcopy(model.policy.optimizer.state_dict())
    results = []
    for as_windows in (False, True):
        model.policy.load_state_dict(start_policy)
        model.policy.optimizer.load_state_dict(start_optim)
        model.rollout_buffer.as_windows = as_windows
        np.random.seed(3)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
        model.train()
        results.append(params(model))
    moved = max((results[0][k] - start_policy[k]).abs().max() for k in start_policy)
    assert moved > 1e-4
    for name in results[0]:
        assert_close(results[0][name], results[1][name], atol=2e-5, rtol=1e-4, msg=name)



@pytest.mark.parametrize("share", [True, False])
def test_flat_gradient_update_equals_sb3_train(tiny_encoder, share) -> None:
    """MLKVPPO's update loop (gradients in one flat buffer: one zero_, one norm, one
    scale) moves the weights exactly as SB3's PPO.train on the same minibatches, with
    grad-norm clipping active; and the flat buffer really holds the gradients."""
    model = one_rollout(MLKVPPO(
        MLKVActorCriticPolicy, venv(), segment_len=8, **{**PPO_KW, "max_grad_norm": 0.05},
        policy_kwargs={"encoder": tiny_encoder, "share_features_extractor": share},
    ))
    start_policy = copy.deepcopy(model.policy.state_dict())
    start_optim = copy.deepcopy(model.policy.optimizer.state_dict())
    results, norms = [], []
    for update in (MLKVPPO._train_segments, PPO.train):
        model.policy.load_state_dict(start_policy)
        model.policy.optimizer.load_state_dict(start_optim)
        model.policy.optimizer.zero_grad()  # grads None: flat_grads must make a new buffer
        np.random.seed(3)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
        update(model)
        results.append(params(model))
        norms.append(th.cat([p.grad.flatten() for p in model.policy.parameters()]).norm())
    moved = max((results[0][k] - start_policy[k]).abs().max() for k in start_policy)
    assert moved > 1e-4
    for name in results[0]:
        assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert_close(norms[0], norms[1])
    assert abs(float(norms[0]) - 0.05) < 1e-5  # the last step's gradient was clipped, in both
    flat = model.policy.flat_grads()  # after SB3's own step the views were kept
    assert flat is not None and flat.numel() == sum(p.numel() for p in model.policy.parameters())
    grads = [p.grad for p in model.policy.parameters()]
    flat.fill_(1.0)
    assert all((g == 1.0).all() for g in grads)  # every .grad is a view of the buffer
    model.policy.optimizer.zero_grad()
    assert model.policy.flat_grads() is not flat  # replaced gradients: a new buffer


def test_rollout_advantage_normalization_matches_reference() -> None:
    adv = np.random.default_rng(0).normal(3.0, 2.0, (40, 3)).astype(np.float32)
    ref = th.as_tensor(adv).flatten()
    ref = (ref - ref.mean()) / (ref.std() + 1e-8)  # SB3's formula, on the whole rollout
    out = normalize_rollout_advantages(adv)
    assert out.dtype == np.float32 and out.shape == adv.shape
    assert_close(th.as_tensor(out).flatten(), ref, atol=1e-6, rtol=1e-5)
    per_env = (adv - adv.mean(0)) / (adv.std(0, ddof=1) + 1e-8)  # a different normalisation
    assert not np.allclose(out, per_env, atol=1e-3)


@pytest.mark.parametrize("fast_update", [True, False])
def test_fast_update_normalizes_advantages_over_the_rollout(tiny_encoder, fast_update) -> None:
    """The fast update normalises advantages once per rollout, the plain one per minibatch
    (as SB3); either way ``normalize_advantage`` is left as it was."""
    model = one_rollout(make(MLKVPPO, venv(), tiny_encoder, fast_update=fast_update))
    raw = model.rollout_buffer.advantages.copy()
    model.train()
    adv = model.rollout_buffer.advantages  # flattened by get(): [n_steps * n_envs, 1]
    assert model.normalize_advantage is True
    if fast_update:
        expected = normalize_rollout_advantages(model.rollout_buffer.swap_and_flatten(raw))
        assert_close(th.as_tensor(adv), th.as_tensor(expected))
    else:
        assert_close(th.as_tensor(adv), th.as_tensor(model.rollout_buffer.swap_and_flatten(raw)))


def test_policy_optimizer_is_fused_adam_with_sb3_eps(tiny_encoder) -> None:
    model = make(MLKVPPO, venv(), tiny_encoder)
    defaults = model.policy.optimizer.defaults
    assert defaults["fused"] is True and defaults["eps"] == 1e-5
    given = MLKVPPO(
        MLKVActorCriticPolicy, venv(), **PPO_KW,
        policy_kwargs={"encoder": tiny_encoder, "optimizer_kwargs": {"foreach": False}},
    ).policy.optimizer.defaults  # the user's choice wins, and SB3's eps is not added
    assert not given["fused"] and given["foreach"] is False and given["eps"] == 1e-8


def test_fast_rollout_with_sb3_minibatches_reproduces_sb3_ppo(tiny_encoder) -> None:
    """fast_update=False: bar storage changes nothing; the weights follow SB3's PPO."""
    plain = make(PPO, venv(), tiny_encoder).learn(2 * 40 * 3)
    fast = make(MLKVPPO, venv(), tiny_encoder, fast_update=False).learn(2 * 40 * 3)
    assert isinstance(fast.rollout_buffer, BarRolloutBuffer)
    p, q = params(plain), params(fast)
    for name in p:
        assert_close(q[name], p[name], atol=1e-4, rtol=1e-3, msg=name)


# ---------------------------------------------------------------------- drop-in PPO
def test_same_seed_same_weights(tiny_encoder) -> None:
    runs = [params(make(MLKVPPO, venv(), tiny_encoder, seed=s).learn(2 * 40 * 3))
            for s in (5, 5, 6)]
    assert all(th.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(th.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_save_load_roundtrip(tmp_path, tiny_encoder) -> None:
    encoder = EncoderConfig.from_dict({**tiny_encoder, "n_features": 9})
    model = MLKVPPO(
        "MLKVPolicy", venv(), policy_kwargs={"encoder": encoder}, segment_len=5, **PPO_KW
    ).learn(40 * 3)
    model.save(tmp_path / "model.zip")
    loaded = MLKVPPO.load(tmp_path / "model.zip", env=venv(seed=9), device="cpu")
    assert isinstance(loaded.policy, MLKVActorCriticPolicy)
    assert loaded.segment_len == 5 and isinstance(loaded.rollout_buffer, BarRolloutBuffer)
    assert isinstance(loaded.policy_kwargs["encoder"], dict)  # saved as JSON, not a pickle
    assert loaded.policy.features_extractor.config == model.policy.features_extractor.config
    for name, value in params(model).items():
        assert th.equal(params(loaded)[name], value)
    obs = loaded.env.reset()
    np.testing.assert_array_equal(
        loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0]
    )
    loaded.learn(40 * 3)  # and it trains on


def test_sac_with_the_mlkv_extractor_learns_a_few_steps(tiny_encoder) -> None:
    env = venv(n_envs=2)
    model = SAC(
        "MultiInputPolicy", env, learning_starts=16, batch_size=16, buffer_size=256,
        train_freq=4, seed=0,
        policy_kwargs={
            "features_extractor_class": MLKVExtractor,
            "features_extractor_kwargs": {"encoder": tiny_encoder, "account_hidden": 8},
            "net_arch": [32],
        },
    )
    before = {k: v.clone() for k, v in model.actor.state_dict().items()}
    model.learn(80)
    after = model.actor.state_dict()
    assert isinstance(model.actor.features_extractor, MLKVExtractor)
    assert any(not th.equal(before[k], after[k]) for k in before if "encoder" in k)
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2, 1) and np.all(np.abs(action) <= 1)


def test_reference_plan_builds_through_policy_kwargs() -> None:
    """The YAML layer's dict (plan as a dict) reaches the encoder; n_features from the env."""
    env = MarketReplayVecEnv(CANDLES, EnvConfig(window=46, episode_length=24), n_envs=1, seed=0)
    plan = KVSharingPlan.reference().to_dict()
    model = MLKVPPO("MLKVPolicy", env, n_steps=8, batch_size=8, policy_kwargs={
        "encoder": {"d_model": 16, "window": 16, "plan": plan}, "account_hidden": 8,
        "net_arch": [16], "log_std_range": (-4.0, 0.5)})
    cfg = model.policy.features_extractor.config
    assert cfg.plan == KVSharingPlan.reference() and cfg.n_features == 9
    assert model.policy.receptive_field == 46 and model.policy.log_std_range == (-4.0, 0.5)


@pytest.mark.parametrize("share", [True, False])
def test_compiled_update_equals_eager_update(tiny_encoder, share, monkeypatch) -> None:
    """compile_update: minibatches of whole equal segments go through the compiled
    evaluate_segments (one graph) and move the weights as the eager update does; the
    compiled function really ran, and a minibatch of unequal pieces still runs eager."""
    monkeypatch.setattr(MLKVPPO, "compile_backend", "aot_eager")  # inductor: ~1 min here
    kw = {**PPO_KW, "n_steps": 48, "batch_size": 16}  # resets every 24 steps: segments of 8
    models = [
        one_rollout(MLKVPPO(MLKVActorCriticPolicy, venv(), segment_len=8, compile_update=c,
                            policy_kwargs={"encoder": tiny_encoder,
                                           "share_features_extractor": share}, **kw))
        for c in (False, True)
    ]
    eager, compiled = models
    compiled.policy.load_state_dict(eager.policy.state_dict())
    compiled.rollout_buffer = eager.rollout_buffer
    calls = []
    inner = compiled.policy._compiled_segments
    compiled.policy._compiled_segments = lambda *a: calls.append(a[0].shape) or inner(*a)
    for model in models:
        np.random.seed(3)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
        model.train()
    assert calls and all(shape[0] == 2 for shape in calls)  # 16 samples = 2 segments of 8
    for name, value in params(eager).items():
        assert_close(params(compiled)[name], value, atol=1e-5, rtol=1e-4, msg=name)
    obs = next(eager.rollout_buffer.get(16)).observations
    starts = obs.starts + np.array([0, -1])
    uneven = dataclasses.replace(obs, lengths=np.array([7, 9]), starts=starts)
    n_before = len(calls)
    compiled.policy.evaluate_actions(uneven, th.zeros(16, 1))
    assert len(calls) == n_before


def test_compile_update_refuses_a_compiled_encoder(tiny_encoder) -> None:
    with pytest.raises(ValueError, match="compile_update and the encoder's compile"):
        make(MLKVPPO, venv(), {**tiny_encoder, "compile": "default"}, compile_update=True)
