"""Train an MLKV actor-critic on the market-replay VecEnv: the whole loop, top to bottom.

``train(config)`` builds the data split, the batched env and the agent from one
:class:`~experiments.config.TrainConfig` (through :mod:`experiments.factory`), then runs
SB3's ``learn`` with one callback that checkpoints (atomically), validates, logs to
TensorBoard/CSV, shows progress, stops on NaN/inf, and saves a checkpoint on Ctrl-C.
``--resume`` continues from the last checkpoint with optimizer, RNG, env state and the
validation/checkpoint schedule restored, so a resumed PPO run equals an uninterrupted one,
whether it stopped on Ctrl-C, SIGTERM or ``kill -9`` (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.utils import set_random_seed

from agents import MemoryUsageCallback
from envs import EnvConfig
from evaluation import run_policy_passes
from experiments.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, to_numpy
from experiments.config import TrainConfig, config_to_yaml
from experiments.errors import TrainingDivergedError, WriteError
from experiments.factory import build_agent, load_split, make_venv
from experiments.progress import TrainProgress
from experiments.runs import (
    PROGRESS,
    ProgressLog,
    clean_stale_files,
    last_checkpoint,
    load_run_config,
    new_run_dir,
    read_progress_rows,
    run_lock,
    write_metadata,
)
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
    """Checkpoints, validation, NaN guard, extra TensorBoard metrics and the progress bar.

    The schedule (next validation, next checkpoint) is part of every checkpoint, so a
    resumed run validates and checkpoints at the same steps as an uninterrupted one. A due
    checkpoint is written before a due validation: resuming from it repeats that validation.
    """

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
        self.next_checkpoint = self.next_eval = 0.0
        self.last_good: Path | None = None
        # checkpoints looked at on the validation split (trials behind best.zip); a resumed
        # run continues its count
        self.n_evaluations = int(read_selection(run_dir).get("checkpoints_evaluated", 0))
        self.snapshot: dict[str, Any] | None = None  # PPO: the state when this rollout began

    def _on_training_start(self) -> None:
        n = self.model.num_timesteps
        saved = getattr(self.model, "_mlkv_schedule", None)
        if saved is not None:
            self.next_eval, self.next_checkpoint = saved
        else:
            self.next_checkpoint = n + (self.config.checkpoint_every or math.inf)
            self.next_eval = n + (self.config.eval_every or math.inf)
        self.best = float(getattr(self.model, "_mlkv_best", -math.inf))

    @property
    def schedule(self) -> tuple[float, float]:
        """``(next validation step, next checkpoint step)``; inf: only at the end."""
        return float(self.next_eval), float(self.next_checkpoint)

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
        # Called after the previous update and before the next collection (PPO and SAC). For
        # PPO the only point where the whole state (weights, optimizer, env, RNGs) is
        # consistent: it is kept in memory, and Ctrl-C saves it rather than a state that
        # counts a rollout it then throws away.
        self._check_finite()
        if self.config.algo == "ppo":
            self.snapshot = training_state(self.model, self.best, self.schedule)
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
        if n >= self.next_checkpoint:
            self.next_checkpoint = n + (self.config.checkpoint_every or math.inf)
            state = training_state(self.model, self.best, self.schedule)
            self.last_good = write_training_state(state, self.checkpoint_path(n))
        if n >= self.next_eval:
            self.evaluate()
            self.next_eval = n + (self.config.eval_every or math.inf)

    def checkpoint_path(self, n: int) -> Path:
        return self.run_dir / "checkpoints" / f"ckpt-{n:09d}.zip"

    def finish(self) -> None:
        """After the last update: check it, validate, and write a due checkpoint."""
        self._check_finite()
        self.next_eval = self.model.num_timesteps  # always validate the final weights
        self._periodic()

    def save_interrupted(self) -> Path | None:
        """On Ctrl-C: a checkpoint a resumed run continues exactly from (None: nothing new).

        PPO saves the state from the start of the interrupted rollout (the partial rollout
        is collected again on resume); SAC saves its state as it is (its replay buffer is
        not saved, so a resumed SAC run is close to, not equal to, an uninterrupted one).
        """
        if self.config.algo != "ppo":
            state = training_state(self.model, self.best, self.schedule)
            return write_training_state(state, self.checkpoint_path(self.model.num_timesteps))
        if self.snapshot is None:
            return self.last_good
        path = self.checkpoint_path(int(self.snapshot["state"]["num_timesteps"]))
        if path.is_file():  # a periodic checkpoint of the same step: the same state
            return path
        return write_training_state(self.snapshot, path)

    def evaluate(self) -> float:
        value = validation_return(self.model, self.validation, self.config.env)
        self.logger.record("eval/validation_log_return", value)
        self.progress.validation(value)
        self.n_evaluations += 1
        if value > self.best:
            self.best = value
            state = training_state(self.model, self.best, self.schedule)
            write_training_state(state, self.run_dir / "best.zip")
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
        values = self.model.logger.name_to_value
        bad_loss = [k for k in LOSS_KEYS if k in values and not math.isfinite(values[k])]
        bad_weights = any(not torch.isfinite(p).all() for p in self.model.policy.parameters())
        if bad_loss or bad_weights:
            what = bad_loss[0] if bad_loss else "weights"
            raise TrainingDivergedError(
                f"non-finite {what} after the update ending at step {self.model.num_timesteps}. "
                f"Lower {self.config.algo}.learning_rate or check the data. Last good "
                f"checkpoint: {self.last_good or 'none yet'}"
            )


#: Losses the NaN guard checks after every update (PPO: ``train/loss``; SAC: the rest).
LOSS_KEYS = (
    "train/loss",
    "train/actor_loss",
    "train/critic_loss",
    "train/ent_coef_loss",
    "train/ent_coef",
)


def training_state(
    agent: BaseAlgorithm, best: float = -math.inf, schedule: tuple[float, float] | None = None
) -> dict[str, Any]:
    """A copy of everything a checkpoint holds: weights, optimizer, counters, RNG states,
    env state and the evaluation/checkpoint schedule (entries for :func:`save_checkpoint`)."""
    env = agent.get_env()
    state = {
        "num_timesteps": agent.num_timesteps,
        "n_updates": int(getattr(agent, "_n_updates", 0)),
        "episode_num": int(agent._episode_num),
        "best": best,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _np_global_state(),
        "python_rng": _python_state_to_tree(random.getstate()),
        "last_obs": copy.deepcopy(agent._last_obs),
        "last_episode_starts": copy.deepcopy(agent._last_episode_starts),
        "env": env.get_state() if hasattr(env, "get_state") else {},
    }
    if schedule is not None:
        state["schedule"] = list(schedule)
    entries = {"policy": copy.deepcopy(agent.policy.state_dict()), "state": state}
    optimizer = getattr(agent.policy, "optimizer", None)
    if optimizer is not None:
        entries["optimizer"] = copy.deepcopy(optimizer.state_dict())
    return entries


def write_training_state(entries: dict[str, Any], path: Path) -> Path:
    """Write :func:`training_state` entries as a checkpoint (atomic)."""
    state = entries["state"]
    meta = {
        "kind": "training",
        "num_timesteps": int(state["num_timesteps"]),
        "best_validation": float(state["best"]),
    }
    return save_checkpoint(path, entries, meta)


def save_training_state(
    agent: BaseAlgorithm,
    path: Path,
    best: float = -math.inf,
    schedule: tuple[float, float] | None = None,
) -> Path:
    """Checkpoint weights, optimizer, counters, RNG states and env state (atomic)."""
    return write_training_state(training_state(agent, best, schedule), path)


def restore_training_state(agent: BaseAlgorithm, path: Path | dict[str, Any]) -> None:
    """Inverse of :func:`save_training_state` on an agent built from the same config
    (``path``: a checkpoint file, or the entries already loaded from one).

    Raises:
        CheckpointError: the checkpoint does not fit the agent (another config).
    """
    entries = load_checkpoint(path)[0] if isinstance(path, (str, Path)) else path
    try:
        agent.policy.load_state_dict(entries["policy"])
        if "optimizer" in entries:
            agent.policy.optimizer.load_state_dict(entries["optimizer"])
        state = entries["state"]
        agent.num_timesteps = int(state["num_timesteps"])
        agent._n_updates = int(state["n_updates"])
        agent._episode_num = int(state["episode_num"])
        agent._mlkv_best = float(state["best"])
        if "schedule" in state:
            agent._mlkv_schedule = tuple(float(x) for x in state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_np_from_saved(state["numpy_rng"]))  # noqa: NPY002 (SB3 uses it)
        random.setstate(_python_state_from_tree(state["python_rng"]))
        agent._last_obs = to_numpy(state["last_obs"])
        agent._last_episode_starts = to_numpy(state["last_episode_starts"])
        env = agent.get_env()
        if state["env"] and hasattr(env, "set_state"):
            env.set_state(to_numpy(state["env"]))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        where = path if isinstance(path, (str, Path)) else "the checkpoint"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{where}: does not fit this run's config (was config.yaml edited?): {message}"
        ) from err


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

    Everything that can be checked is checked before anything is written: the config, the
    data, and on resume the checkpoint and ``progress.csv``. A failure there leaves no new
    run directory and changes no file of the run being resumed.

    Args:
        config: the experiment; ignored when resuming (the run's own ``config.yaml`` is used).
        runs_root: parent of ``<name>/<timestamp>-s<seed>/`` run directories.
        resume: a run directory to continue from its last checkpoint.
        argv: the command line to record (default ``sys.argv``).
        show_progress: draw the progress bar.

    Raises:
        ConfigError, CheckpointError, ValueError: a bad config, checkpoint, progress log or
            data source (nothing written).
        WriteError: a file cannot be written (full disk, read-only folder); the message
            names the last good checkpoint.
        RunBusyError: another process trains the run.
        TrainingDivergedError: NaN/inf in the observations, losses or weights.
    """
    with contextlib.ExitStack() as stack:
        entries: dict[str, Any] | None = None
        if resume is not None:
            run_dir = Path(resume)
            config = load_run_config(run_dir)
            stack.enter_context(run_lock(run_dir))
            ckpt = last_checkpoint(run_dir)
            entries = load_checkpoint(ckpt)[0] if ckpt is not None else None
            read_progress_rows(run_dir / PROGRESS)  # a damaged log stops us before any write
        elif config is None:
            raise ValueError("train() needs a config (or resume=RUN_DIR)")

        if config.threads:
            limit_threads(config.threads)
        set_random_seed(config.seed)
        split = load_split(config.data)
        venv = make_venv(split.train, config)
        agent = build_agent(config, venv)
        if entries is not None:
            restore_training_state(agent, entries)
        if resume is None:
            run_dir = new_run_dir(runs_root, config.name, config.seed)
            stack.enter_context(run_lock(run_dir))
        else:
            clean_stale_files(run_dir)
        write_metadata(run_dir, None if resume is not None else config_to_yaml(config), argv)
        start = agent.num_timesteps
        agent.set_logger(
            Logger(
                str(run_dir),
                [
                    ProgressLog(
                        run_dir / PROGRESS, keep_until=start if resume is not None else None
                    ),
                    make_output_format("tensorboard", str(run_dir)),
                ],
            )
        )
        stack.callback(agent.logger.close)
        return _learn(agent, config, run_dir, split.validation, show_progress)


def _learn(
    agent: BaseAlgorithm,
    config: TrainConfig,
    run_dir: Path,
    validation: pd.DataFrame,
    show_progress: bool,
) -> Path:
    """The training loop of :func:`train` in a prepared run directory."""
    remaining = config.total_steps - agent.num_timesteps
    total = config.trained_steps
    progress = TrainProgress(
        total,
        start=agent.num_timesteps,
        enabled=show_progress,
        title=f"{config.name} seed {config.seed}",
    )
    if total != config.total_steps and agent.num_timesteps == 0:
        progress.note(
            f"total_steps={config.total_steps} is not a whole number of rollouts "
            f"({config.rollout_steps} steps each): training runs {total} steps."
        )
    callback = TrainCallback(config, run_dir, validation, progress)
    callback.last_good = last_checkpoint(run_dir)
    with progress, _sigterm_as_interrupt():
        try:
            if remaining > 0:
                agent.learn(
                    remaining,
                    callback=[callback, MemoryUsageCallback()],
                    reset_num_timesteps=agent.num_timesteps == 0,
                )
            else:  # resumed at the end of the budget: only validate and save
                callback.init_callback(agent)
                callback.on_training_start(locals(), globals())
            callback.finish()
            # one more row: the last update's losses and the last validation
            agent.logger.record("time/total_timesteps", agent.num_timesteps)
            agent.logger.dump(agent.num_timesteps)
            write_training_state(
                training_state(agent, callback.best, callback.schedule), run_dir / "final.zip"
            )
        except KeyboardInterrupt:
            path = callback.save_interrupted()
            where = f"checkpoint saved to {path}" if path else "nothing to save yet"
            progress.note(f"interrupted: {where}; resume with --resume {run_dir}")
            raise
        except WriteError as err:
            raise WriteError(
                f"{err} Training stopped at step {agent.num_timesteps}; the last good "
                f"checkpoint is {callback.last_good or 'none yet'}. Resume with "
                f"`mlkv-trader train --resume {run_dir}` once it can be written."
            ) from err
    return run_dir


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what a preempted machine or ``kill`` sends) acts as Ctrl-C: a checkpoint is
    saved. Only in the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
