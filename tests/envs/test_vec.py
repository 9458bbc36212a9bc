"""MarketReplayVecEnv: equals N single envs step for step; SB3 VecEnv semantics; test-mode
lockstep with per-env ledgers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs import (
    BuyAndHoldPolicy,
    EnvConfig,
    FlatPolicy,
    MarketReplayEnv,
    MarketReplayVecEnv,
    RandomPolicy,
)

SHORT = EnvConfig(window=16, episode_length=9, commission_bps=2.0, financing_bps_per_bar=0.2)


def _assert_obs_slices_features(vec: MarketReplayVecEnv, obs: dict[str, np.ndarray]) -> None:
    T = vec.config.window
    for i, b in enumerate(vec.bar_index):
        np.testing.assert_array_equal(obs["candles"][i], vec.features[b - T + 1 : b + 1])


def _actions(rng: np.random.Generator, n: int, action: str) -> np.ndarray:
    if action == "discrete":
        return rng.integers(0, 3, n)
    return rng.uniform(-1.3, 1.3, (n, 1)).astype(np.float32)


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_vec_equals_n_single_envs_step_for_step(gbm: pd.DataFrame, action: str) -> None:
    n, seed = 5, 40
    config = SHORT.replace(action=action)
    vec = MarketReplayVecEnv(gbm, config, n_envs=n, seed=seed)
    singles = [MarketReplayEnv(gbm, config) for _ in range(n)]
    obs = vec.reset()
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    n_done = 0
    for _ in range(40):  # > 4 episodes per env: auto-resets included
        for i in range(n):
            np.testing.assert_array_equal(obs["candles"][i], single_obs[i]["candles"])
            np.testing.assert_array_equal(obs["account"][i], single_obs[i]["account"])
            assert vec.bar_index[i] == singles[i].bar_index
        _assert_obs_slices_features(vec, obs)
        actions = _actions(rng, n, action)
        obs, rewards, dones, infos = vec.step(actions)
        assert rewards.dtype == np.float32 and dones.dtype == bool
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i])
            assert rewards[i] == np.float32(r)
            assert dones[i] == (term or trunc)
            if dones[i]:
                n_done += 1
                final = infos[i]["terminal_observation"]
                np.testing.assert_array_equal(final["candles"], o["candles"])
                np.testing.assert_array_equal(final["account"], o["account"])
                assert infos[i]["TimeLimit.truncated"] == trunc
                assert infos[i]["equity"] == info["equity"] and infos[i]["cost"] == info["cost"]
                pd.testing.assert_frame_equal(vec.ledger(i, completed=True), env.ledger())
                o, _ = env.reset()  # no seed: continues the env's generator, like the vec env
            else:
                assert infos[i] == {}
                assert vec.equity[i] == info["equity"] and vec.last_cost[i] == info["cost"]
                assert vec.position[i] == info["position"]
            single_obs[i] = o
    assert n_done >= 4 * n


def test_equivalence_check_can_fail(gbm: pd.DataFrame) -> None:
    """Seeding env i with another seed than ``seed + i`` gives other episodes."""
    vec = MarketReplayVecEnv(gbm, SHORT, n_envs=2, seed=40)
    obs = vec.reset()
    other, _ = MarketReplayEnv(gbm, SHORT).reset(seed=40 + 2)
    assert not np.array_equal(obs["candles"][1], other["candles"])


def test_seed_method_reseeds_at_next_reset(gbm: pd.DataFrame) -> None:
    a = MarketReplayVecEnv(gbm, SHORT, n_envs=3, seed=7)
    b = MarketReplayVecEnv(gbm, SHORT, n_envs=3)
    assert b.seed(7) == [7, 8, 9]
    np.testing.assert_array_equal(a.reset()["candles"], b.reset()["candles"])
    np.testing.assert_array_equal(a.bar_index, b.bar_index)


def test_test_mode_runs_in_lockstep_with_ledgers(eurusd: pd.DataFrame) -> None:
    """K random passes + baselines side by side: all end together; ledgers match single envs."""
    config = EnvConfig(window=32, mode="test")
    test_split = eurusd.iloc[-700:]
    policies = [RandomPolicy(seed=s) for s in range(3)] + [BuyAndHoldPolicy(), FlatPolicy()]
    vec = MarketReplayVecEnv(test_split, config, n_envs=len(policies), seed=0)
    vec.reset()
    steps, actions_taken = 0, []
    while True:
        bars = vec.bar_index
        assert np.all(bars == bars[0])
        actions = np.concatenate([p(bars[i : i + 1]) for i, p in enumerate(policies)])
        actions_taken.append(actions)
        _, _, dones, infos = vec.step(actions)
        steps += 1
        if dones.any():
            assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
            break
    arrays = vec.ledger_arrays(completed=True)
    assert np.all(arrays["steps"] == steps) and arrays["reward"].shape == (len(policies), steps)
    assert not np.isnan(arrays["reward"]).any()
    np.testing.assert_array_equal(
        arrays["bar"][0], np.arange(len(test_split) - steps, len(test_split))
    )
    log_return = arrays["reward"].sum(axis=1)
    assert log_return[-1] == 0.0 and np.all(arrays["costs"][-1] == 0)
    for i in range(len(policies)):
        single = MarketReplayEnv(test_split, config)
        single.reset()
        for a in actions_taken:
            single.step(a[i])
        pd.testing.assert_frame_equal(vec.ledger(i, completed=True), single.ledger())
        assert abs(log_return[i] - np.log(single.ledger()["equity"].iloc[-1])) < 1e-9
    # the running episodes restarted together at the first bar
    assert np.all(vec.steps == 0) and vec.ledger_arrays()["reward"].shape == (len(policies), 0)


def test_bad_vec_actions_raise_and_change_nothing(gbm: pd.DataFrame) -> None:
    vec = MarketReplayVecEnv(gbm, SHORT, n_envs=3, seed=0)
    vec.reset()
    before = vec.bar_index
    bad = np.zeros((3, 1), np.float32)
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="env 2: invalid action"):
        vec.step(bad)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(4, np.float32))
    np.testing.assert_array_equal(vec.bar_index, before)
    discrete = MarketReplayVecEnv(gbm, SHORT.replace(action="discrete"), n_envs=2, seed=0)
    discrete.reset()
    with pytest.raises(ValueError, match=r"env 1: invalid action 3"):
        discrete.step(np.array([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        discrete.step(np.array([0.0, 1.0]))


def test_parallel_kernel_is_chosen_for_big_steps_with_threads(
    gbm: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    import envs.vec

    monkeypatch.setattr(envs.vec.numba, "get_num_threads", lambda: 2)
    n = envs.vec.PARALLEL_MIN_ROWS // SHORT.window  # n envs write exactly the minimum
    assert MarketReplayVecEnv(gbm, SHORT, n_envs=n).parallel
    assert not MarketReplayVecEnv(gbm, SHORT, n_envs=n - 1).parallel
    assert not MarketReplayVecEnv(gbm, SHORT, n_envs=n, parallel=False).parallel
    monkeypatch.setattr(envs.vec.numba, "get_num_threads", lambda: 1)
    assert not MarketReplayVecEnv(gbm, SHORT, n_envs=n).parallel


def test_parallel_kernel_equals_serial(gbm: pd.DataFrame) -> None:
    serial = MarketReplayVecEnv(gbm, SHORT, n_envs=6, seed=3, parallel=False)
    parallel = MarketReplayVecEnv(gbm, SHORT, n_envs=6, seed=3, parallel=True)
    a, b = serial.reset(), parallel.reset()
    rng = np.random.default_rng(1)
    for _ in range(25):
        np.testing.assert_array_equal(a["candles"], b["candles"])
        np.testing.assert_array_equal(a["account"], b["account"])
        actions = _actions(rng, 6, "continuous")
        (a, ra, da, _), (b, rb, db, _) = serial.step(actions), parallel.step(actions)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(da, db)


def test_sb3_ppo_trains_on_the_vec_env(gbm: pd.DataFrame) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    vec = VecMonitor(MarketReplayVecEnv(gbm, SHORT, n_envs=2, seed=0))
    model = PPO(
        "MultiInputPolicy", vec, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(64)
    assert model.num_timesteps == 64
    assert len(model.ep_info_buffer) > 0  # episodes finished and were counted
    assert vec.get_attr("render_mode") == [None, None]
    assert vec.env_is_wrapped(VecMonitor) == [False, False]


def test_get_attr_and_env_method_are_per_env(gbm: pd.DataFrame) -> None:
    vec = MarketReplayVecEnv(gbm, SHORT, n_envs=3, seed=1)
    vec.reset()
    assert vec.get_attr("bar_index") == list(vec.bar_index)
    assert vec.get_attr("bar_index", indices=[2]) == [vec.bar_index[2]]
    assert vec.get_attr("features")[1] is vec.features
    vec.step(np.ones((3, 1), np.float32))
    ledgers = vec.env_method("ledger", indices=[0, 2])
    assert [len(x) for x in ledgers] == [1, 1] and ledgers[1]["time"].iloc[0] == gbm.index[
        vec.bar_index[2]
    ]


def test_state_round_trip_resumes_exactly(gbm: pd.DataFrame) -> None:
    vec = MarketReplayVecEnv(gbm, SHORT, n_envs=3, seed=5)
    vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(7):
        vec.step(_actions(rng, 3, "continuous"))
    saved = vec.get_state()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "if" for v in saved.values())
    actions = [_actions(rng, 3, "continuous") for _ in range(20)]
    first = [vec.step(a) for a in actions]  # crosses auto-resets (new random starts)
    resumed = MarketReplayVecEnv(gbm, SHORT, n_envs=3, seed=999)
    resumed.set_state(saved)
    for a, (obs, rewards, dones, _) in zip(actions, first, strict=True):
        obs2, rewards2, dones2, _ = resumed.step(a)
        np.testing.assert_array_equal(obs["candles"], obs2["candles"])
        np.testing.assert_array_equal(rewards, rewards2)
        np.testing.assert_array_equal(dones, dones2)
    with pytest.raises(ValueError, match="n_envs"):
        MarketReplayVecEnv(gbm, SHORT, n_envs=2).set_state(saved)


def test_vec_without_ledger_still_steps(gbm: pd.DataFrame) -> None:
    vec = MarketReplayVecEnv(gbm, SHORT.replace(record_ledger=False), n_envs=2, seed=0)
    vec.reset()
    for _ in range(20):  # through auto-resets
        vec.step(np.ones((2, 1), np.float32))
    with pytest.raises(RuntimeError, match="record_ledger"):
        vec.ledger_arrays()
