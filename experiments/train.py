"""Train an MLKV actor-critic on the market-replay VecEnv: the whole loop, top to bottom.

``train(config)`` builds the data split, the batched env and the agent from one
:class:`~experiments.config.TrainConfig` (through :mod:`experiments.factory`), then runs
SB3's ``learn`` with one callback that checkpoints (atomically), validates, logs to
TensorBoard/CSV, shows progress, stops on NaN/inf, and saves a checkpoint on Ctrl-C.
``--resume`` continues from the last checkpoint with optimizer, RNG and env state restored,
so a resumed PPO run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed

from agents import MemoryUsageCallback
from envs import EnvConfig
from evaluation import run_policy_passes
from experiments.checkpoint import load_checkpoint, save_checkpoint, to_numpy
from experiments.config import TrainConfig, config_to_yaml
from experiments.errors import TrainingDivergedError
from experiments.factory import build_agent, load_split, make_venv
from experiments.progress import TrainProgress
from experiments.runs import last_checkpoint, load_run_config, new_run_dir, write_metadata
from experiments.sweeps.backends import limit_threads

SELECTION = "selection.json"
"""Per run: how many checkpoints were looked at on the validation split to choose best.zip."""


def read_selection(run_dir: Path) -> dict[str, Any]:
    """The run's ``selection.json`` (``{}`` when it has none: trained before issue 15)."""
    import json

    path = Path(run_dir) / SELECTION
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def validation_return(agent: BaseAlgorithm, candles: pd.DataFrame, env: EnvConfig) -> float:
    """Total log return of one deterministic pass over ``candles`` (test mode).

    Leaves every global RNG as it was (the pass samples from a private, seeded fork), so
    the training seeds keep their own exploration noise after a validation.
    """
    passes = run_policy_passes(agent.policy, candles, env, n_passes=1, deterministic=True, seed=0)
    return float(passes.log_returns.sum())


class TrainCallback(BaseCallback):
    """Checkpoints, validation, NaN guard, extra TensorBoard metrics and the progress bar."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, validation: pd.DataFrame, progress: TrainProgress
    ) -> None:
        super().__init__()
        self.config, self.run_dir, self.validation, self.progress = (
            config,
            run_dir,
            validation,
            progress,
        )
        self.best = -math.inf
        self.next_checkpoint = self.next_eval = 0
        self.last_good: Path | None = None
        # checkpoints looked at on the validation split (trials behind best.zip); a resumed
        # run continues its count
        self.n_evaluations = int(read_selection(run_dir).get("checkpoints_evaluated", 0))

    def _on_training_start(self) -> None:
        n = self.model.num_timesteps
        self.next_checkpoint = n + (self.config.checkpoint_every or math.inf)
        self.next_eval = n + (self.config.eval_every or math.inf)
        self.best = float(getattr(self.model, "_mlkv_best", -math.inf))

    def _on_step(self) -> bool:
        obs = self.locals.get("new_obs")
        if isinstance(obs, dict) and not all(np.isfinite(v).all() for v in obs.values()):
            raise TrainingDivergedError(
                f"non-finite observation at step {self.num_timesteps}; check the data for "
                f"extreme values. Last good checkpoint: {self.last_good}"
            )
        dones = self.locals.get("dones")
        if dones is not None and dones.any():  # episode return = log(final / initial equity)
            for info in np.asarray(self.locals["infos"], dtype=object)[dones]:
                if "equity" in info:
                    ratio = max(info["equity"], 1e-300) / self.config.env.initial_equity
                    self.logger.record_mean("rollout/episode_log_return", math.log(ratio))
        self.progress.update(self.num_timesteps)
        if self.config.algo == "sac":
            self._periodic()
        return True

    def _on_rollout_start(self) -> None:
        # PPO: called after the previous update, before the next collection: the only point
        # where a checkpoint captures the full state (weights, optimizer, env, RNGs).
        if self.config.algo == "ppo":
            self._check_finite()
            self._periodic()

    def _on_rollout_end(self) -> None:
        policy = self.model.policy
        if hasattr(policy, "last_rollout_sigma") and policy.last_rollout_sigma is not None:
            self.logger.record("rollout/mean_sigma", float(policy.last_rollout_sigma))
        equity = getattr(self.training_env, "equity", None)
        if equity is not None:
            self.logger.record("rollout/mean_equity", float(np.mean(equity)))

    def _periodic(self) -> None:
        n = self.model.num_timesteps
        if n >= self.next_eval:
            self.evaluate()
            self.next_eval = n + self.config.eval_every
        if n >= self.next_checkpoint:
            self.last_good = save_training_state(
                self.model, self.run_dir / "checkpoints" / f"ckpt-{n:09d}.zip", self.best
            )
            self.next_checkpoint = n + self.config.checkpoint_every

    def finish(self) -> None:
        """After the last update: check it, validate, and write a due checkpoint."""
        self._check_finite()
        self.next_eval = self.model.num_timesteps  # always validate the final weights
        self._periodic()

    def evaluate(self) -> float:
        value = validation_return(self.model, self.validation, self.config.env)
        self.logger.record("eval/validation_log_return", value)
        self.progress.validation(value)
        self.n_evaluations += 1
        if value > self.best:
            self.best = value
            save_training_state(self.model, self.run_dir / "best.zip", self.best)
        self._write_selection()
        return value

    def _write_selection(self) -> None:
        import json

        from experiments.checkpoint import write_atomic

        doc = {
            "selected_on": "validation",
            "checkpoints_evaluated": self.n_evaluations,
            "best_validation_log_return": self.best if math.isfinite(self.best) else None,
        }
        write_atomic(self.run_dir / SELECTION, json.dumps(doc, indent=1).encode())

    def _check_finite(self) -> None:
        loss = self.model.logger.name_to_value.get("train/loss")
        bad_loss = loss is not None and not math.isfinite(loss)
        bad_weights = any(not torch.isfinite(p).all() for p in self.model.policy.parameters())
        if bad_loss or bad_weights:
            what = "loss" if bad_loss else "weights"
            raise TrainingDivergedError(
                f"non-finite {what} after the update ending at step {self.model.num_timesteps}. "
                f"Lower ppo.learning_rate or check the data. Last good checkpoint: "
                f"{self.last_good or 'none yet'}"
            )


def save_training_state(agent: BaseAlgorithm, path: Path, best: float = -math.inf) -> Path:
    """Checkpoint weights, optimizer, counters, RNG states and env state (atomic)."""
    env = agent.get_env()
    state = {
        "num_timesteps": agent.num_timesteps,
        "n_updates": int(getattr(agent, "_n_updates", 0)),
        "episode_num": int(agent._episode_num),
        "best": best,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _np_global_state(),
        "python_rng": _python_state_to_tree(random.getstate()),
        "last_obs": agent._last_obs,
        "last_episode_starts": agent._last_episode_starts,
        "env": env.get_state() if hasattr(env, "get_state") else {},
    }
    entries = {"policy": agent.policy.state_dict(), "state": state}
    optimizer = getattr(agent.policy, "optimizer", None)
    if optimizer is not None:
        entries["optimizer"] = optimizer.state_dict()
    return save_checkpoint(
        path,
        entries,
        {"kind": "training", "num_timesteps": agent.num_timesteps, "best_validation": best},
    )


def restore_training_state(agent: BaseAlgorithm, path: Path) -> None:
    """Inverse of :func:`save_training_state` on an agent built from the same config."""
    entries, _ = load_checkpoint(path)
    agent.policy.load_state_dict(entries["policy"])
    if "optimizer" in entries:
        agent.policy.optimizer.load_state_dict(entries["optimizer"])
    state = entries["state"]
    agent.num_timesteps = int(state["num_timesteps"])
    agent._n_updates = int(state["n_updates"])
    agent._episode_num = int(state["episode_num"])
    agent._mlkv_best = float(state["best"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(_np_from_saved(state["numpy_rng"]))  # noqa: NPY002 (SB3 uses it)
    random.setstate(_python_state_from_tree(state["python_rng"]))
    agent._last_obs = to_numpy(state["last_obs"])
    agent._last_episode_starts = to_numpy(state["last_episode_starts"])
    env = agent.get_env()
    if state["env"] and hasattr(env, "set_state"):
        env.set_state(to_numpy(state["env"]))


def _np_global_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (SB3 uses it)
    return {
        "name": name,
        "keys": keys.astype(np.int64),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_from_saved(s: dict[str, Any]) -> tuple:
    keys = np.asarray(s["keys"]).astype(np.uint32)
    return (s["name"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["cached"]))


def _python_state_to_tree(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def _python_state_from_tree(tree: dict[str, Any]) -> tuple:
    return (int(tree["version"]), tuple(int(x) for x in tree["internal"]), tree["gauss"])


def train(
    config: TrainConfig | None = None,
    *,
    runs_root: str | Path = "runs",
    resume: str | Path | None = None,
    argv: list[str] | None = None,
    show_progress: bool = True,
) -> Path:
    """Train an agent; returns its run directory (``final.zip`` inside).

    Args:
        config: the experiment; ignored when resuming (the run's own ``config.yaml`` is used).
        runs_root: parent of ``<name>/<timestamp>-s<seed>/`` run directories.
        resume: a run directory to continue from its last checkpoint.
        argv: the command line to record (default ``sys.argv``).
        show_progress: draw the progress bar.
    """
    if resume is not None:
        run_dir = Path(resume)
        config = load_run_config(run_dir)
    else:
        if config is None:
            raise ValueError("train() needs a config (or resume=RUN_DIR)")
        run_dir = new_run_dir(runs_root, config.name, config.seed)
    write_metadata(run_dir, config_to_yaml(config), argv)

    if config.threads:
        limit_threads(config.threads)
    set_random_seed(config.seed)
    split = load_split(config.data)
    venv = make_venv(split.train, config)
    agent = build_agent(config, venv)
    agent.set_logger(configure(str(run_dir), ["csv", "tensorboard"]))
    ckpt = last_checkpoint(run_dir) if resume is not None else None
    if ckpt is not None:
        restore_training_state(agent, ckpt)
    remaining = config.total_steps - agent.num_timesteps
    progress = TrainProgress(
        config.total_steps,
        start=agent.num_timesteps,
        enabled=show_progress,
        title=f"{config.name} seed {config.seed}",
    )
    callback = TrainCallback(config, run_dir, split.validation, progress)
    with progress:
        try:
            if remaining > 0:
                agent.learn(
                    remaining,
                    callback=[callback, MemoryUsageCallback()],
                    reset_num_timesteps=ckpt is None,
                )
            else:  # resumed at the end of the budget: only validate and save
                callback.init_callback(agent)
        except KeyboardInterrupt:
            path = save_training_state(
                agent,
                run_dir / "checkpoints" / f"ckpt-{agent.num_timesteps:09d}.zip",
                callback.best,
            )
            progress.note(
                f"interrupted: checkpoint saved to {path}; resume with --resume {run_dir}"
            )
            raise
        callback.finish()
    save_training_state(agent, run_dir / "final.zip", callback.best)
    return run_dir

