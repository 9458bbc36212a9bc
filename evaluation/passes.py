"""Run a policy over a test period K times in lockstep through the batched env.

Two paths give identical results for the MLKV policy:

* encode-once (fast): the test series is encoded once with the policy's encoder and shared
  by all K passes; each step only runs the small heads on ``encoded[bar_index]``;
* per-step (generic): any object with SB3's ``predict(obs, deterministic=...)``.

Stochastic passes sample ``a ~ N(mean, sigma)`` (clipped to [-1, 1]) exactly as SB3's
``predict(deterministic=False)`` does, from a private copy of torch's RNG seeded per call
(:func:`torch.random.fork_rng`): the caller's global RNG state, CPU and CUDA, is the same
after a call as before, so a validation pass during training never resets the exploration
noise of the training seeds (issue 15). The env draws from its own numpy generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from agents.actor import stack_actors
from envs import EnvConfig, MarketReplayVecEnv
from envs.kernels import MarketArrays


@dataclass(frozen=True)
class PassResult:
    """Per-bar results of K passes over the same bars. Shapes: K passes x N steps."""

    times: pd.DatetimeIndex  # [N] time of the bar each step's reward is marked at
    positions: np.ndarray  # float64 [K, N] position held over each step
    log_returns: np.ndarray  # float64 [K, N] net log return of equity per step
    costs: np.ndarray  # float64 [K, N] costs paid per step (fraction of equity)
    mean: np.ndarray  # float32 [K, N] policy mean action per step (NaN for generic policies)
    sigma: np.ndarray  # float32 [K, N] policy sigma per step (NaN for generic policies)

    @property
    def n_passes(self) -> int:
        return int(self.positions.shape[0])

    def rows(self, index: slice) -> PassResult:
        """The passes ``index`` selects (same bars)."""
        return PassResult(
            self.times,
            self.positions[index],
            self.log_returns[index],
            self.costs[index],
            self.mean[index],
            self.sigma[index],
        )


CHUNK = 1024
"""Steps per chunk of a streaming walk: ``[K, CHUNK]`` arrays at a time."""


@dataclass(frozen=True)
class PassChunk:
    """Steps ``first .. first + C - 1`` of K passes walking a test period in lockstep."""

    first: int  # index of the chunk's first step in the walk
    positions: np.ndarray  # float64 [K, C] position held over each step
    log_returns: np.ndarray  # float64 [K, C] net log return of equity per step (0 once ended)
    costs: np.ndarray  # float64 [K, C] costs per step, fraction of the equity before it
    mean: np.ndarray  # float32 [K, C] policy mean action (NaN: generic policies, ended passes)
    sigma: np.ndarray  # float32 [K, C] policy sigma (NaN likewise)


def walk_times(
    candles: pd.DataFrame | MarketArrays, env_config: EnvConfig
) -> pd.DatetimeIndex:
    """``[N]`` the time of the bar each step of a test walk over ``candles`` is marked at."""
    venv = _test_venv(candles, env_config, 1, None)
    return pd.DatetimeIndex(venv.market.index[venv.walk_start + 1 :])


def _test_venv(
    candles: pd.DataFrame | MarketArrays, env_config: EnvConfig, n_envs: int, seed: int | None
) -> MarketReplayVecEnv:
    """A test-mode vec env without ledger or numba threads (the replay kernel is serial:
    spinning numba threads would take the cores the policy's torch ops run on)."""
    config = env_config.replace(mode="test", record_ledger=False)
    return MarketReplayVecEnv(candles, config, n_envs=n_envs, seed=seed, parallel=False)


class ScheduledRun:
    """K passes that hold target positions given chunk by chunk (baselines, random passes).

    Each :meth:`step` call takes the next ``C`` steps' targets ``[K, C]`` (rounded to float32,
    as actions are) and walks the env through them in one numba call.
    """

    def __init__(
        self, candles: pd.DataFrame | MarketArrays, env_config: EnvConfig, n_passes: int, seed: int
    ) -> None:
        self.venv = _test_venv(candles, env_config, n_passes, seed)
        self.venv.reset()
        self.alive = np.ones(n_passes, dtype=bool)
        self.n_steps = self.venv.market.n_bars - 1 - self.venv.walk_start
        self.done = 0

    def step(self, targets: np.ndarray) -> PassChunk:
        """The next ``targets.shape[1]`` steps of every pass."""
        actions = np.asarray(targets, dtype=np.float32).T.astype(np.float64)  # [C, K]
        rewards, positions, costs, _ = self.venv.replay(actions, self.alive)
        first, self.done = self.done, self.done + actions.shape[0]
        nan = np.full(rewards.T.shape, np.nan, dtype=np.float32)
        return PassChunk(first, positions.T.copy(), rewards.T.copy(), costs.T.copy(), nan, nan)

    def walk(self, targets: np.ndarray, chunk: int = CHUNK) -> Iterator[PassChunk]:
        """Every step with fixed targets ``[K, n_steps]``, or ``[K, 1]`` held throughout."""
        while self.done < self.n_steps:
            t1 = min(self.done + chunk, self.n_steps)
            if targets.shape[1] == 1:
                yield self.step(np.broadcast_to(targets, (targets.shape[0], t1 - self.done)))
            else:
                yield self.step(targets[:, self.done : t1])


def iter_policy_passes(
    policy: Any,
    candles: pd.DataFrame | MarketArrays,
    env_config: EnvConfig,
    *,
    n_passes: int,
    deterministic: bool | np.ndarray,
    seed: int,
    fast: bool = True,
    chunk: int = CHUNK,
) -> Iterator[PassChunk]:
    """:func:`run_policy_passes`, chunk by chunk of steps (same draws, same numbers).

    The MLKV policy's encode-once path streams in chunks of ``chunk`` steps
    (:func:`iter_lockstep_passes` with one policy); a generic policy (``predict``) and
    :class:`ScheduledActions` give their arrays too, the former in one chunk at the end.
    """
    if isinstance(policy, ScheduledActions):
        yield from ScheduledRun(candles, env_config, n_passes, seed).walk(policy.actions, chunk)
        return
    mask = np.broadcast_to(np.asarray(deterministic, dtype=bool), (n_passes,)).copy()
    if not (fast and encodes_bars(policy)):
        yield _generic_passes(policy, candles, env_config, n_passes, mask, seed)
        return
    for chunks in iter_lockstep_passes(
        [policy], candles, env_config, n_passes=n_passes, deterministic=mask, seeds=[seed],
        chunk=chunk,
    ):
        yield chunks[0]


def encodes_bars(policy: Any) -> bool:
    """Whether ``policy`` has the encode-once path (:func:`iter_lockstep_passes`)."""
    return hasattr(policy, "encode_bars") and hasattr(policy, "heads_from_encoded")


def actor_program(policy: Any) -> Any:
    """The policy's :class:`agents.actor.ActorProgram`, or None if it has none."""
    make = getattr(policy, "actor_program", None)
    return make() if make is not None else None


def lockstep_actor(policies: list[Any]) -> Any:
    """One actor for all ``policies``: ``[S, K, D], [S, K, A] -> (mean, log_sigma)``, each
    ``[S, K, act]`` (:func:`agents.actor.stack_actors`). A single policy whose actor does
    not stack runs its module path; None when several cannot share one (run them one at a
    time)."""
    stacked = stack_actors([actor_program(p) for p in policies])
    if stacked is not None or len(policies) > 1:
        return stacked
    policy = policies[0]

    def actor(encoded: torch.Tensor, account: torch.Tensor) -> tuple[Any, Any]:
        if hasattr(policy, "actor_from_encoded"):
            mean, log_sigma = policy.actor_from_encoded(encoded[0], account[0])
        else:
            mean, log_sigma, _ = policy.heads_from_encoded(encoded[0], account[0])
        return mean[None], log_sigma[None]

    return actor


def iter_lockstep_passes(
    policies: list[Any],
    candles: pd.DataFrame | MarketArrays,
    env_config: EnvConfig,
    *,
    n_passes: int,
    deterministic: np.ndarray,
    seeds: list[int],
    chunk: int = CHUNK,
) -> Iterator[list[PassChunk]]:
    """K passes of each of S encode-once policies, all S x K walking the test in lockstep.

    Each policy's test series is encoded once; each step runs every policy's actor heads on
    ``encoded[bar]`` in one batched call (:func:`lockstep_actor`), draws policy ``s``'s
    actions from its own generator seeded with ``seeds[s]`` (so policy ``s`` gets the same
    passes alone as in any group), and steps all ``S x K`` envs in one replay call.

    Args:
        policies: S policies with ``encode_bars`` (:func:`encodes_bars`) whose actors stack
            (:func:`lockstep_actor` is not None); a single policy always runs.
        candles: the test period.
        env_config: costs and window; ``mode`` is forced to ``"test"``.
        n_passes: K passes per policy.
        deterministic: bool ``[K]``, the passes that act with the mean.
        seeds: ``[S]`` seed of each policy's sampled actions.
        chunk: steps per yielded chunk.

    Yields:
        ``[S]`` :class:`PassChunk` (one per policy) for each chunk of steps.
    """
    s_count, k = len(policies), n_passes
    actor = lockstep_actor(policies)
    if actor is None:
        raise ValueError("these policies' actors cannot be stacked; run them one at a time.")
    venv = _test_venv(candles, env_config, s_count * k, seeds[0])
    account = venv.reset()["account"]
    alive = np.ones(s_count * k, dtype=bool)
    n_steps = venv.market.n_bars - 1 - venv.walk_start
    bar = venv.walk_start
    mask = np.asarray(deterministic, dtype=bool)
    with torch.inference_mode():  # no autograd bookkeeping at all: ~10% of a small op
        encoded = torch.stack([p.encode_bars(venv.features) for p in policies])  # [S, N, D]
        device = encoded.device
        mask_t = torch.as_tensor(mask, device=device)[:, None]  # [K, 1]
        # a private generator per policy, seeded like torch.manual_seed(seed) seeds the global
        # one: the same draws, and the caller's global RNG (CPU and CUDA) is never touched,
        # even between the chunks this generator yields (issue 15)
        generators = [torch.Generator(device=device) for _ in seeds]
        for generator, s in zip(generators, seeds, strict=True):
            generator.manual_seed(int(s))
        for first in range(0, n_steps, chunk):
            c = min(chunk, n_steps - first)
            out = np.empty((3, c, s_count * k), dtype=np.float32)  # action, mean, sigma
            rewards, positions, costs = np.empty((3, c, s_count * k))
            for j in range(c):
                rows = encoded[:, bar + first + j, None, :].expand(-1, k, -1)  # [S, K, D]
                acc = torch.from_numpy(account).to(device).view(s_count, k, -1)  # [S, K, A]
                mean, log_sigma = actor(rows, acc)  # [S, K, 1] each
                sigma = log_sigma.exp()
                action = _draw(mean, sigma, mask, mask_t, generators).clamp(-1.0, 1.0)
                out[:, j] = torch.stack([action, mean, sigma]).view(3, -1).cpu().numpy()
                if not alive.all():
                    out[1:, j, ~alive] = np.nan
                r, p, cost, account = venv.replay(out[0, j : j + 1], alive, account=True)
                rewards[j], positions[j], costs[j] = r[0], p[0], cost[0]
            yield [
                PassChunk(
                    first, positions[:, rows].T.copy(), rewards[:, rows].T.copy(),
                    costs[:, rows].T.copy(), out[1][:, rows].T.copy(), out[2][:, rows].T.copy(),
                )
                for rows in (slice(i * k, (i + 1) * k) for i in range(s_count))
            ]


def _draw(
    mean: torch.Tensor,
    sigma: torch.Tensor,
    mask: np.ndarray,
    mask_t: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """``mean + eps * sigma`` for ``[S, K, act]`` rows, drawn for policy ``s`` from
    ``generators[s]`` exactly as SB3's ``DiagGaussianDistribution`` samples (``Normal.rsample``:
    one ``normal_`` draw of the ``[K, act]`` batch); the masked rows (``mask_t [K, 1]``) get
    their means; no draw when every row is deterministic."""
    if mask.all():
        return mean
    eps = torch.stack(
        [
            torch.empty(mean.shape[1:], dtype=mean.dtype, device=mean.device).normal_(
                generator=generator
            )
            for generator in generators
        ]
    )
    action = mean + eps * sigma  # SB3's scale is ones_like(mean) * sigma: the same floats
    if mask.any():
        action = torch.where(mask_t, mean, action)
    return action


def run_policy_passes(
    policy: Any,
    candles: pd.DataFrame,
    env_config: EnvConfig,
    *,
    n_passes: int,
    deterministic: bool | np.ndarray,
    seed: int,
    fast: bool = True,
) -> PassResult:
    """Run ``n_passes`` test-mode passes of ``policy`` over ``candles`` in lockstep.

    Args:
        policy: an MLKV policy (fast path) or anything with ``predict(obs, deterministic)``.
        candles: the test period.
        env_config: costs and window; ``mode`` is forced to ``"test"``.
        n_passes: K, the number of passes (envs stepped together).
        deterministic: act with the mean instead of sampling; a bool mask ``[n_passes]``
            makes only the passes it marks deterministic (the others still sample).
        seed: seeds the sampled actions (a private fork of torch's RNG; the global state
            is left as it was) and the env.
        fast: use the encode-once path when the policy supports it.
    """
    chunks = list(
        iter_policy_passes(
            policy, candles, env_config, n_passes=n_passes, deterministic=deterministic,
            seed=seed, fast=fast,
        )
    )
    return PassResult(
        walk_times(candles, env_config),
        *(np.concatenate([getattr(c, name) for c in chunks], axis=1) for name in _COLUMNS),
    )


_COLUMNS = ("positions", "log_returns", "costs", "mean", "sigma")


def _generic_passes(
    policy: Any,
    candles: pd.DataFrame | MarketArrays,
    env_config: EnvConfig,
    n_passes: int,
    mask: np.ndarray,
    seed: int,
) -> PassChunk:
    """The per-step path for any ``predict`` policy: every step's observation, one chunk,
    sampled inside a forked, seeded copy of torch's RNG (the global state is left as it was)."""
    devices = _cuda_devices(policy)
    with torch.random.fork_rng(devices=devices):
        # seed only the forked generators (torch.manual_seed would also queue a seed for
        # every CUDA device, outside the fork)
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        venv = MarketReplayVecEnv(
            candles, env_config.replace(mode="test"), n_envs=n_passes, seed=seed
        )
        finished = np.zeros(n_passes, dtype=bool)
        obs = venv.reset()
        with torch.no_grad():
            while not finished.all():
                action = _predict(policy, obs, mask)
                obs, _, dones, _ = venv.step(np.asarray(action, dtype=np.float32).reshape(-1, 1))
                finished |= dones
    ledger = venv.ledger_arrays(completed=True)
    valid = ledger["bar"] >= 0  # [K, N]; False only after a ruined pass ended early
    equity_before = np.concatenate(
        [np.full((n_passes, 1), env_config.initial_equity), ledger["equity"][:, :-1]], axis=1
    )
    nan = np.full(valid.shape, np.nan, dtype=np.float32)
    return PassChunk(
        0,
        np.where(valid, ledger["position"], 0.0),
        np.where(valid, ledger["reward"], 0.0),
        np.where(valid, ledger["costs"] / equity_before, 0.0),
        nan,
        nan,
    )


def _cuda_devices(policy: Any) -> list[int]:
    """CUDA devices the policy samples on (their RNG is forked too); [] on CPU."""
    params = getattr(policy, "parameters", None)
    if params is None or not torch.cuda.is_available():
        return []
    return sorted({p.device.index or 0 for p in params() if p.device.type == "cuda"})


class ScheduledActions:
    """A "policy" that plays fixed target positions: ``actions[:, t]`` at step ``t``.

    ``actions`` is ``[K, N]``; a single column ``[K, 1]`` is held at every step (flat,
    buy-and-hold). Used for the baselines and the exposure-matched random passes, so they go
    through exactly the same env, costs and accounting as the policy.
    """

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions, dtype=np.float32)
        self.t = 0

    def predict(self, obs: Any, deterministic: bool = True) -> tuple[np.ndarray, None]:
        column = min(self.t, self.actions.shape[1] - 1)
        self.t += 1
        return self.actions[:, column : column + 1], None


def _predict(policy: Any, obs: dict, mask: np.ndarray) -> np.ndarray:
    """``predict`` with the passes in ``mask`` deterministic (sampling draws for all rows)."""
    if mask.all():
        return np.asarray(policy.predict(obs, deterministic=True)[0], dtype=np.float32)
    action = np.array(policy.predict(obs, deterministic=False)[0], dtype=np.float32)
    if mask.any():
        subset = {key: value[mask] for key, value in obs.items()}
        action[mask] = policy.predict(subset, deterministic=True)[0]
    return action
