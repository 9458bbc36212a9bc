"""BarRolloutBuffer: segment minibatches partition the rollout and never cross a reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import BarRolloutBuffer, SegmentObs
from agents.buffers import segment_table

T, F, A = 4, 2, 3
ACTION = spaces.Box(-1.0, 1.0, (1,), np.float32)
SPACE = spaces.Dict(
    candles=spaces.Box(-np.inf, np.inf, (T, F), np.float32),
    account=spaces.Box(-np.inf, np.inf, (A,), np.float32),
)


def trajectories(n_steps: int, n_envs: int, resets: np.ndarray, seed: int) -> np.ndarray:
    """``[n_steps, n_envs]`` bars: +1 per step, jumping to a random bar where ``resets``."""
    rng = np.random.default_rng(seed)
    bars = np.zeros((n_steps, n_envs), dtype=np.int64)
    bars[0] = rng.integers(T - 1, 100, n_envs)
    for t in range(1, n_steps):
        bars[t] = np.where(resets[t], rng.integers(T - 1, 100, n_envs), bars[t - 1] + 1)
    return bars


def filled_buffer(
    bars: np.ndarray, space: spaces.Dict, segment_len: int | None
) -> BarRolloutBuffer:
    n_steps, n_envs = bars.shape
    buf = BarRolloutBuffer(n_steps, space, ACTION, "cpu", n_envs=n_envs, segment_len=segment_len)
    buf.attach(th.arange(200 * F, dtype=th.float32).reshape(200, F))
    for t in range(n_steps):
        sample_id = (np.arange(n_envs) * n_steps + t).astype(np.float32)  # flat index
        buf.add_bars(
            bars[t],
            np.repeat(sample_id[:, None], A, axis=1),
            sample_id[:, None],
            np.zeros(n_envs, np.float32),
            np.zeros(n_envs, np.float32),
            th.zeros(n_envs, 1),
            th.zeros(n_envs),
            th.ones(n_envs, 1),
        )
    buf.compute_returns_and_advantage(th.zeros(n_envs), np.zeros(n_envs, dtype=bool))
    return buf


@settings(max_examples=40, deadline=None)
@given(
    n_steps=st.integers(1, 40),
    n_envs=st.integers(1, 4),
    segment_len=st.integers(1, 12),
    batch_size=st.integers(1, 50),
    reset_prob=st.floats(0.0, 0.5),
    seed=st.integers(0, 10_000),
)
def test_segment_minibatches_partition_the_rollout(
    n_steps, n_envs, segment_len, batch_size, reset_prob, seed
) -> None:
    resets = np.random.default_rng(seed + 1).random((n_steps, n_envs)) < reset_prob
    bars = trajectories(n_steps, n_envs, resets, seed)
    buf = filled_buffer(bars, SPACE, segment_len)
    np.random.seed(seed)  # noqa: NPY002 -- the buffer shuffles with SB3's global RNG
    batches = list(buf.get(batch_size))
    n = n_steps * n_envs
    sb3_sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    assert [len(b.actions) for b in batches] == sb3_sizes
    seen = []
    for batch in batches:
        obs = batch.observations
        assert isinstance(obs, SegmentObs)
        assert (obs.lengths >= 1).all() and (obs.lengths <= segment_len).all()
        ids = batch.actions[:, 0].numpy().astype(np.int64)  # flat index env * n_steps + step
        assert np.array_equal(batch.observations.account[:, 0].numpy().astype(np.int64), ids)
        flat_bars = bars.T.reshape(-1)
        assert np.array_equal(obs.bars, flat_bars[ids])  # SegmentObs names each sample's bar
        piece = np.repeat(np.arange(len(obs.lengths)), obs.lengths)
        for p in range(len(obs.lengths)):
            members = ids[piece == p]
            env, steps = members // n_steps, members % n_steps
            assert (env == env[0]).all() and np.array_equal(np.diff(steps), np.ones(len(steps) - 1))
            # consecutive bars: never across a reset (unless it landed on the next bar, which
            # encodes exactly like no reset at all)
            assert np.array_equal(np.diff(flat_bars[members]), np.ones(len(members) - 1))
        seen.append(ids)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n))  # each sample once


def test_segment_table_splits_at_env_boundaries_jumps_and_length() -> None:
    bars = np.array([10, 11, 12, 13, 14, 30, 31, 32, 33, 34, 35, 36])  # 2 envs x 6 steps
    start, length = segment_table(bars, n_steps=6, segment_len=3)
    assert start.tolist() == [0, 3, 5, 6, 9]
    assert length.tolist() == [3, 2, 1, 3, 3]


def test_plain_mode_draws_sb3_permutation_and_rebuilds_windows() -> None:
    bars = trajectories(6, 2, np.zeros((6, 2), bool), seed=0)
    buf = filled_buffer(bars, SPACE, segment_len=None)
    np.random.seed(5)  # noqa: NPY002 -- SB3's buffers draw from the global RNG
    batch = next(buf.get(4))
    np.random.seed(5)  # noqa: NPY002
    expected_ids = np.random.permutation(12)[:4]  # noqa: NPY002 -- what DictRolloutBuffer draws
    ids = batch.actions[:, 0].numpy().astype(np.int64)
    assert np.array_equal(ids, expected_ids)
    candles = batch.observations["candles"]  # [4, T, F]
    last = bars.T.reshape(-1)[ids]
    feats = buf.features.numpy()
    for j, b in enumerate(last):
        assert np.array_equal(candles[j].numpy(), feats[b - T + 1 : b + 1])


def test_bar_buffer_does_not_store_windows(dict_space) -> None:
    buf = BarRolloutBuffer(512, dict_space(T=128, F=9, A=8), ACTION, "cpu", n_envs=8)
    assert set(buf.observations) == {"account"}
    stored = sum(a.nbytes for a in buf.observations.values()) + buf.bar_index.nbytes
    assert stored < 512 * 8 * 128 * 9 * 4 / 50  # windows would take 19 MB here
    with pytest.raises(ValueError, match="segment_len must be >= 1"):
        BarRolloutBuffer(8, dict_space(), ACTION, "cpu", segment_len=0)
