"""Train an MLKV actor-critic on the market-replay VecEnv: the whole loop, top to bottom.

``train(config)`` builds the data split, the batched env and the agent from one
:class:`~experiments.config.TrainConfig`, then runs SB3's ``learn`` with one callback that
checkpoints (atomically), validates, logs to TensorBoard/CSV, shows progress, stops on
NaN/inf, and saves a checkpoint on Ctrl-C. ``--resume`` continues from the last checkpoint
with optimizer, RNG and env state restored, so a resumed PPO run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv

from agents import (
    MLKVPPO,
    MemoryUsageCallback,
    MLKVActorCriticPolicy,
    MLKVExtractor,
    ScaledReward,
)
from data import Split, chronological_split, datasets, load_candles, synthetic
from envs import EnvConfig, MarketReplayVecEnv
from experiments.backends import limit_threads
from experiments.checkpoint import load_checkpoint, save_checkpoint, to_numpy
from experiments.config import (
    SYNTHETIC_PREFIX,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_to_yaml,
    load_config,
)
from experiments.progress import TrainProgress
from experiments.rundir import new_run_dir, write_metadata


class TrainingDivergedError(RuntimeError):
    """NaN or inf in the loss, the weights or the observations; names the step."""


def load_market(cfg: DataConfig) -> pd.DataFrame:
    """Candles named by a data config: an embedded dataset, a file, or a synthetic market."""
    if cfg.source.startswith(SYNTHETIC_PREFIX):
        name = cfg.source[len(SYNTHETIC_PREFIX) :]
        return synthetic.generate(name, cfg.n_bars, seed=cfg.market_seed, **cfg.params)
    if cfg.source in datasets.available():
        return datasets.load(cfg.source)
    if not Path(cfg.source).exists():
        raise ValueError(
            f"data.source: {cfg.source!r} is neither an embedded dataset "
            f"({', '.join(datasets.available())}), a file, nor 'synthetic:gbm|ar1|regime'."
        )
    return load_candles(cfg.source, time_format=cfg.time_format)


def load_split(cfg: DataConfig) -> Split:
    """The chronological train/validation/test split of the configured market."""
    return chronological_split(load_market(cfg), cfg.fractions, embargo=cfg.embargo)


def policy_kwargs(model: ModelConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for :class:`MLKVActorCriticPolicy` from the model section."""
    return {
        "encoder": {
            "d_model": model.d_model,
            "window": model.window,
            "plan": dict(model.plan),
            "memory_layers": list(model.memory_layers),
            "memory": dict(model.memory) or None,
        },
        "account_hidden": (model.account_hidden,),
        "net_arch": list(model.net_arch),
        "log_std_range": (model.log_std_min, model.log_std_max),
        "log_std_init": model.log_std_init,
    }


def sac_policy_kwargs(model: ModelConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for SAC's ``MultiInputPolicy``: the MLKV features extractor
    under SAC's own squashed-Gaussian actor and twin critics."""
    kwargs = policy_kwargs(model)
    return {
        "features_extractor_class": MLKVExtractor,
        "features_extractor_kwargs": {k: kwargs[k] for k in ("encoder", "account_hidden")},
        "net_arch": kwargs["net_arch"],
    }


def build_agent(config: TrainConfig, venv: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm named by ``config.algo`` with the MLKV policy, seeded by the config."""
    kwargs = policy_kwargs(config.model)
    if config.algo == "ppo":
        return MLKVPPO(
            MLKVActorCriticPolicy,
            venv,
            **asdict(config.ppo),
            policy_kwargs=kwargs,
            seed=config.seed,
            device=config.device,
            verbose=0,
        )  # PPOConfig's fields are SB3's argument names
    sac = asdict(config.sac)
    if not sac["ent_coef"].startswith("auto"):
        sac["ent_coef"] = float(sac["ent_coef"])
    return SAC(
        "MultiInputPolicy",
        venv,
        **sac,
        policy_kwargs=sac_policy_kwargs(config.model),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def make_venv(candles: pd.DataFrame, config: TrainConfig) -> VecEnv:
    """The batched training env (train mode), seeded by the run's seed; rewards scaled by
    ``config.reward_scale`` when it is not 1."""
    env_cfg = replace(config.env, mode="train")
    venv = MarketReplayVecEnv(candles, env_cfg, n_envs=config.n_envs, seed=config.seed)
    return venv if config.reward_scale == 1.0 else ScaledReward(venv, config.reward_scale)


def validation_return(agent: BaseAlgorithm, candles: pd.DataFrame, env: EnvConfig) -> float:
    """Total log return of one deterministic pass over ``candles`` (test mode)."""
    from experiments.evaluation.passes import run_policy_passes

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
        if value > self.best:
            self.best = value
            save_training_state(self.model, self.run_dir / "best.zip", self.best)
        return value

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


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoints/ckpt-*.zip`` of a run, or None."""
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.zip"))
    return ckpts[-1] if ckpts else None


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


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config saved in a run directory (validated like any YAML experiment)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml).")
    return load_config(path)
