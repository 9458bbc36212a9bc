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

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from envs import EnvConfig, MarketReplayVecEnv


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
    devices = _cuda_devices(policy)
    with torch.random.fork_rng(devices=devices):
        # seed only the forked generators (torch.manual_seed would also queue a seed for
        # every CUDA device, outside the fork)
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        return _run(policy, candles, env_config, n_passes, deterministic, seed, fast)


def _cuda_devices(policy: Any) -> list[int]:
    """CUDA devices the policy samples on (their RNG is forked too); [] on CPU."""
    params = getattr(policy, "parameters", None)
    if params is None or not torch.cuda.is_available():
        return []
    return sorted({p.device.index or 0 for p in params() if p.device.type == "cuda"})


def _run(
    policy: Any,
    candles: pd.DataFrame,
    env_config: EnvConfig,
    n_passes: int,
    deterministic: bool | np.ndarray,
    seed: int,
    fast: bool,
) -> PassResult:
    """:func:`run_policy_passes` inside its forked, seeded RNG."""
    venv = MarketReplayVecEnv(candles, env_config.replace(mode="test"), n_envs=n_passes, seed=seed)
    use_fast = fast and hasattr(policy, "encode_bars") and hasattr(policy, "heads_from_encoded")
    nan = np.full((n_passes, 1), np.nan, dtype=np.float32)
    mask = np.broadcast_to(np.asarray(deterministic, dtype=bool), (n_passes,)).copy()
    means: list[np.ndarray] = []
    sigmas: list[np.ndarray] = []
    finished = np.zeros(n_passes, dtype=bool)
    obs = venv.reset()
    with torch.no_grad():
        encoded = policy.encode_bars(venv.features) if use_fast else None
        while not finished.all():
            if use_fast:
                action, mean, sigma = _fast_actions(policy, encoded, venv.bar_index, obs, mask)
            else:
                action = _predict(policy, obs, mask)
                mean = sigma = nan
            obs, _, dones, _ = venv.step(np.asarray(action, dtype=np.float32).reshape(-1, 1))
            finished |= dones
            means.append(mean[:, 0])
            sigmas.append(sigma[:, 0])
    ledger = venv.ledger_arrays(completed=True)
    valid = ledger["bar"] >= 0  # [K, N]; False only after a ruined pass ended early
    equity_before = np.concatenate(
        [np.full((n_passes, 1), env_config.initial_equity), ledger["equity"][:, :-1]], axis=1
    )
    costs = np.where(valid, ledger["costs"] / equity_before, 0.0)
    n = valid.shape[1]
    bars = ledger["bar"][np.argmax(valid.sum(axis=1))]  # a pass that ran to the end
    return PassResult(
        times=pd.DatetimeIndex(candles.index[bars]),
        positions=np.where(valid, ledger["position"], 0.0),
        log_returns=np.where(valid, ledger["reward"], 0.0),
        costs=costs,
        mean=np.where(valid, np.stack(means, axis=1)[:, :n], np.nan),
        sigma=np.where(valid, np.stack(sigmas, axis=1)[:, :n], np.nan),
    )


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


def _fast_actions(
    policy: Any, encoded: torch.Tensor, bar_index: np.ndarray, obs: dict, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actions from pre-encoded bars, drawn exactly as SB3's ``predict`` draws them."""
    account = torch.as_tensor(obs["account"], device=encoded.device)
    rows = encoded[torch.as_tensor(bar_index, device=encoded.device)]  # [K, D]
    mean, log_sigma, _ = policy.heads_from_encoded(rows, account)  # [K, act] each
    distribution = policy.action_dist.proba_distribution(mean, log_sigma)
    action = distribution.get_actions(deterministic=bool(mask.all()))
    if mask.any() and not mask.all():  # the same draws as _predict, then the means
        action = torch.where(torch.as_tensor(mask, device=mean.device)[:, None], mean, action)
    action = action.clamp(-1.0, 1.0)
    return action.cpu().numpy(), mean.cpu().numpy(), log_sigma.exp().cpu().numpy()
