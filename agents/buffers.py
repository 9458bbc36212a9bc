"""A PPO rollout buffer that stores bar indices instead of candle windows.

SB3's ``DictRolloutBuffer`` keeps every observation: ``n_steps * n_envs * T * F`` floats of
candles that are all slices of one ``[n_bars, F]`` feature array. :class:`BarRolloutBuffer`
keeps, per step and env, the index of the observation's last bar (plus the small account
vector) and rebuilds what the update needs from the feature array:

* ``segment_len = None``: SB3's minibatches (a uniform random permutation of all samples,
  drawn from numpy's global RNG exactly like SB3) with windows rebuilt from the bars --
  the plain path, sample for sample what ``DictRolloutBuffer`` would yield;
* ``segment_len = L``: minibatches made of contiguous time segments of one env's
  trajectory (at most ``L`` steps, never across a jump in bar index, e.g. an env reset),
  yielded as :class:`~agents.policy.SegmentObs` so the policy encodes each segment with its
  receptive-field context in one ``encode_series`` pass.

Segments are shuffled (numpy's global RNG) and laid end to end; minibatches cut that
sequence every ``batch_size`` samples, so they have SB3's sizes and a segment may be split
between two minibatches (each piece is encoded with its own context).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import DictRolloutBufferSamples

from .extractor import ACCOUNT_KEY, CANDLES_KEY
from .policy import SegmentObs

__all__ = ["BarRolloutBuffer", "segment_table"]


def segment_table(
    bars: np.ndarray, n_steps: int, segment_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split flattened trajectories into runs of consecutive bars of at most ``segment_len``.

    Args:
        bars: ``[n_envs * n_steps]`` int, env-major (env ``j``'s steps are
            ``bars[j * n_steps : (j + 1) * n_steps]``, oldest first), as SB3's
            ``swap_and_flatten`` lays them out.
        n_steps: steps per env.
        segment_len: longest segment.

    Returns:
        ``(start [S], length [S])``: flat index of each segment's first sample and its
        length. A segment never crosses an env boundary or a step whose bar is not the
        previous bar + 1 (an episode reset, or anything else that moves the env).
    """
    n = bars.shape[0]
    breaks = np.zeros(n, dtype=bool)
    breaks[::n_steps] = True  # each env's trajectory starts a run
    breaks[1:] |= bars[1:] != bars[:-1] + 1
    run_start = np.flatnonzero(breaks)  # [R]
    run_len = np.diff(np.append(run_start, n))  # [R]
    pieces = -(-run_len // segment_len)  # [R] segments per run
    start = np.repeat(run_start, pieces) + segment_len * (
        np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    )
    end = np.minimum(start + segment_len, np.repeat(run_start + run_len, pieces))
    return start, end - start


class BarRolloutBuffer(DictRolloutBuffer):
    """Rollout buffer of bar indices and account states (no candle windows).

    Call :meth:`attach` with the env's feature array before :meth:`get`. Extra stored
    arrays (``[n_steps, n_envs]``): ``bar_index`` (last bar of each observation) and
    ``sigmas`` (``[n_steps, n_envs, act]``, the actor's sigma at each step).

    Args:
        buffer_size: steps per env (``n_steps``).
        observation_space: ``Dict(candles=Box[T, F], account=Box[A])``.
        action_space: the action space.
        device: torch device of the yielded tensors.
        gae_lambda: GAE lambda.
        gamma: discount.
        n_envs: number of envs.
        segment_len: ``None`` for SB3's random minibatches, else the longest time segment
            of the fast update.
        as_windows: yield window dicts even in segment mode (a test of the fast update
            against the plain one on the very same minibatches).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        segment_len: int | None = None,
        as_windows: bool = False,
    ) -> None:
        if segment_len is not None and segment_len < 1:
            raise ValueError(f"BarRolloutBuffer: segment_len must be >= 1, got {segment_len}.")
        self.segment_len = segment_len
        self.as_windows = as_windows
        self.window = observation_space[CANDLES_KEY].shape[0]
        self.features: th.Tensor | None = None
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )

    def reset(self) -> None:
        account = self.observation_space[ACCOUNT_KEY]
        self.observations = {
            ACCOUNT_KEY: np.zeros((self.buffer_size, self.n_envs, *account.shape), account.dtype)
        }
        self.bar_index = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self.sigmas = np.zeros((self.buffer_size, self.n_envs, self.action_dim), np.float32)
        self.actions = np.zeros((self.buffer_size, self.n_envs, self.action_dim), np.float32)
        for name in ("rewards", "returns", "episode_starts", "values", "log_probs", "advantages"):
            setattr(self, name, np.zeros((self.buffer_size, self.n_envs), dtype=np.float32))
        self.generator_ready = False
        super(RolloutBuffer, self).reset()  # BaseBuffer: pos = 0, full = False

    def attach(self, features: th.Tensor) -> None:
        """Set the ``[n_bars, F]`` feature array (on the buffer's device) bars refer to."""
        self.features = features

    def add_bars(
        self,
        bar_index: np.ndarray,
        account: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: np.ndarray | th.Tensor,
        log_prob: np.ndarray | th.Tensor,
        sigma: np.ndarray | th.Tensor,
    ) -> None:
        """Store one step of all envs (``DictRolloutBuffer.add`` with bars for candles).

        Host arrays are stored as they are (no torch call): the fast rollout hands over
        what its one device-to-host transfer per step brought back.

        Args:
            bar_index: ``[n_envs]`` last bar of each env's observation.
            account: ``[n_envs, A]`` account observations.
            action: ``[n_envs, act]`` sampled (unclipped) actions.
            reward: ``[n_envs]``.
            episode_start: ``[n_envs]``.
            value: ``[n_envs, 1]`` or ``[n_envs]``.
            log_prob: ``[n_envs]``.
            sigma: ``[n_envs, act]``.
        """
        self.bar_index[self.pos] = bar_index
        self.observations[ACCOUNT_KEY][self.pos] = np.asarray(account)
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        self.rewards[self.pos] = np.asarray(reward)
        self.episode_starts[self.pos] = np.asarray(episode_start)
        self.values[self.pos] = _host(value).reshape(-1)
        self.log_probs[self.pos] = _host(log_prob).reshape(-1)
        self.sigmas[self.pos] = _host(sigma).reshape(self.n_envs, self.action_dim)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def get(  # type: ignore[override]
        self, batch_size: int | None = None
    ) -> Generator[DictRolloutBufferSamples, None, None]:
        assert self.full, "BarRolloutBuffer.get: the rollout is not complete."
        if self.features is None:
            raise RuntimeError("BarRolloutBuffer.get: call attach(features) first.")
        n = self.buffer_size * self.n_envs
        if self.segment_len is None:
            indices = np.random.permutation(n)  # noqa: NPY002 -- SB3 draws from the global RNG
        if not self.generator_ready:
            self.observations = {k: self.swap_and_flatten(v) for k, v in self.observations.items()}
            for name in ("bar_index", "actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.bar_index = self.bar_index.reshape(-1)  # [N]: swap_and_flatten gives [N, 1]
            self.generator_ready = True
        if batch_size is None:
            batch_size = n
        if self.segment_len is None:
            for begin in range(0, n, batch_size):
                idx = indices[begin : begin + batch_size]
                yield self._samples(idx, starts=self.bar_index[idx], lengths=np.ones_like(idx))
            return
        seg_start, seg_len = segment_table(self.bar_index, self.buffer_size, self.segment_len)
        order = np.random.permutation(seg_start.shape[0])  # noqa: NPY002 -- as SB3 does
        seg_start, seg_len = seg_start[order], seg_len[order]
        seg_end_pos = np.cumsum(seg_len)  # [S] end of each segment in the shuffled sequence
        seg_begin_pos = seg_end_pos - seg_len
        for begin in range(0, n, batch_size):
            end = min(begin + batch_size, n)
            lo = np.searchsorted(seg_end_pos, begin, side="right")
            hi = np.searchsorted(seg_begin_pos, end, side="left")
            piece_begin = np.maximum(seg_begin_pos[lo:hi], begin)
            piece_len = np.minimum(seg_end_pos[lo:hi], end) - piece_begin
            piece_start = seg_start[lo:hi] + (piece_begin - seg_begin_pos[lo:hi])  # flat index
            idx = np.repeat(piece_start, piece_len) + (
                np.arange(end - begin) - np.repeat(np.cumsum(piece_len) - piece_len, piece_len)
            )  # [M] flat sample indices, piece by piece
            yield self._samples(idx, starts=self.bar_index[piece_start], lengths=piece_len)

    def _samples(
        self, idx: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> DictRolloutBufferSamples:
        """Samples ``idx`` whose bars form the runs ``(starts, lengths)`` in that order."""
        obs = SegmentObs(
            features=self.features,
            starts=starts,
            lengths=lengths,
            account=self.to_torch(self.observations[ACCOUNT_KEY][idx]),
            window=self.window,
        )
        return DictRolloutBufferSamples(
            observations=obs.as_windows() if self.as_windows or self.segment_len is None else obs,
            actions=self.to_torch(self.actions[idx]),
            old_values=self.to_torch(self.values[idx].flatten()),
            old_log_prob=self.to_torch(self.log_probs[idx].flatten()),
            advantages=self.to_torch(self.advantages[idx].flatten()),
            returns=self.to_torch(self.returns[idx].flatten()),
        )


def _host(x: np.ndarray | th.Tensor) -> np.ndarray:
    """``x`` as a host array (a tensor is copied off its device)."""
    return x.detach().cpu().numpy() if isinstance(x, th.Tensor) else np.asarray(x)
