"""Load trained policies from run directories (``config.yaml`` + ``best.zip``/``final.zip``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.sac.policies import MultiInputPolicy as SACMultiInputPolicy

from agents import MLKVActorCriticPolicy
from envs import MarketReplayEnv
from experiments.checkpoint import CheckpointError, load_checkpoint
from experiments.config import TrainConfig
from experiments.train import load_run_config, policy_kwargs, sac_policy_kwargs

CHECKPOINTS = ("best.zip", "final.zip")


def find_checkpoint(run_dir: Path, prefer: str = "best") -> Path:
    """``best.zip`` (or ``final.zip`` with ``prefer="final"``), else the other, else the newest
    periodic checkpoint; a clear error when the run has none."""
    order = CHECKPOINTS if prefer == "best" else CHECKPOINTS[::-1]
    for name in order:
        if (run_dir / name).is_file():
            return run_dir / name
    periodic = sorted((run_dir / "checkpoints").glob("ckpt-*.zip"))
    if periodic:
        return periodic[-1]
    raise FileNotFoundError(
        f"{run_dir}: no checkpoint (best.zip, final.zip or checkpoints/ckpt-*.zip). Has the "
        "run finished, or was it interrupted before its first checkpoint?"
    )


def load_policy(
    run_dir: str | Path,
    *,
    candles: pd.DataFrame | None = None,
    prefer: str = "best",
    device: str = "cpu",
) -> tuple[BasePolicy, TrainConfig]:
    """Rebuild a run's policy from its ``config.yaml`` and load its weights.

    PPO runs give the MLKV actor-critic (its passes encode the test period once); SAC runs
    give SB3's SAC policy with the MLKV extractor (its passes call ``predict`` per step, and
    the report has no sigma series for them).

    Args:
        run_dir: a run directory written by ``mlkv-trader train``.
        candles: data the policy will trade, only to check it yields the same observation
            shapes as training (features per bar, window).
        prefer: ``"best"`` (best validation return) or ``"final"`` checkpoint.
        device: torch device.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint in it.
        CheckpointError: a corrupted checkpoint, or weights that do not fit the config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory.")
    config = load_run_config(run_dir)
    from experiments.train import load_split

    probe = candles if candles is not None else load_split(config.data).test
    env = MarketReplayEnv(probe, config.env.replace(mode="test"))
    spaces = (env.observation_space, env.action_space, lambda _: 0.0)
    if config.algo == "sac":  # SB3's squashed-Gaussian actor; passes use its predict()
        policy = SACMultiInputPolicy(*spaces, **sac_policy_kwargs(config.model)).to(device)
    else:
        policy = MLKVActorCriticPolicy(*spaces, **policy_kwargs(config.model)).to(device)
    path = find_checkpoint(run_dir, prefer)
    entries, _ = load_checkpoint(path, map_location=device)
    state = _policy_state(entries, path)
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the weights do not fit the model described by {run_dir / 'config.yaml'} "
            f"(was the config edited after training?): {str(err).splitlines()[0]}"
        ) from err
    policy.set_training_mode(False)
    return policy, config


def _policy_state(entries: dict[str, Any], path: Path) -> dict[str, Any]:
    if "policy" not in entries:
        raise CheckpointError(f"{path}: holds no policy weights.")
    return entries["policy"]
