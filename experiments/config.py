"""Experiment configuration: frozen dataclasses hold the defaults, YAML files the experiments.

A YAML file mirrors :class:`TrainConfig` (sections ``data``, ``env``, ``model``, ``ppo``,
``sac``); keys it leaves out take the defaults below. The resolved config is written into
every run directory, so a run can be reproduced from its folder alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from envs import FEATURE_NAMES, EnvConfig
from experiments.schema import ConfigError, apply_overrides, from_dict, to_dict
from models import EncoderConfig, KVSharingPlan, PKMConfig

SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True)
class DataConfig:
    """Which candles to trade and how to split them."""

    source: str = "eurusd_h1"
    """Embedded dataset name, a CSV/CSV.gz/Parquet path, or ``synthetic:gbm|ar1|regime|echo``."""
    n_bars: int = 20_000
    """Bars to generate (synthetic sources only)."""
    params: dict[str, float] = field(default_factory=dict)
    """Generator parameters for synthetic sources, e.g. ``{phi: 0.3, vol: 0.002}``."""
    market_seed: int = 0
    """Seed of the synthetic market (fixed across training seeds: same market, new agent)."""
    time_format: str | None = None
    """strftime format of a file's time column (None: inferred)."""
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Chronological shares of train / validation / test."""
    embargo: int = 128
    """Bars dropped between consecutive parts."""

    def __post_init__(self) -> None:
        if self.n_bars < 2:
            raise ValueError(f"n_bars must be >= 2, got {self.n_bars}")
        if self.embargo < 0:
            raise ValueError(f"embargo must be >= 0, got {self.embargo}")


@dataclass(frozen=True)
class ModelConfig:
    """The MLKV encoder and the actor-critic heads."""

    d_model: int = 64
    """Width of the encoder."""
    window: int = 16
    """Sliding attention window W (bars); receptive field = n_kv_layers * (W - 1) + 1."""
    plan: KVSharingPlan = field(default_factory=KVSharingPlan.reference)
    """KV-sharing plan: ``kind`` (mha, gqa, mqa, cla, mlkv, custom) and its constructor's
    arguments, e.g. ``{kind: mlkv, n_layers: 9, n_heads: 8, n_kv_heads: 2, n_kv_layers: 3}``."""
    memory_layers: tuple[int, ...] = ()
    """Layers whose MLP is a product-key memory (UltraMem-style); () = none."""
    memory: PKMConfig | None = None
    """Product-key memory settings (n_keys, k, heads, k_dim, ...); null = PKMConfig defaults."""
    account_hidden: int = 32
    """Width of the MLP over the account features."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layers of the actor and critic heads."""
    log_std_init: float = 0.0
    """Initial log-sigma of the actor (0: sigma 1)."""
    log_std_min: float = -5.0
    """Lower clamp of the state-dependent log-sigma."""
    log_std_max: float = 1.0
    """Upper clamp of the state-dependent log-sigma."""
    compile: str | None = None
    """torch.compile mode of the encoder (default, reduce-overhead, ...); null: eager. Off by
    default: on the CPU it does not pay for its compile time (docs/benchmarks.md)."""
    autocast_bf16: bool = False
    """Run the encoder under bf16 autocast (the CUDA fast path; attention stays fp32)."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.window < 1:
            raise ValueError("d_model and window must be >= 1")
        if not self.log_std_min < self.log_std_init < self.log_std_max:
            raise ValueError("need log_std_min < log_std_init < log_std_max")
        if self.memory is not None and self.memory.sparse_grad:
            raise ConfigError(
                "model.memory.sparse_grad",
                "true gives the memory's value table a sparse gradient, but PPO and SAC train "
                "with SB3's Adam and clip_grad_norm_, which take dense gradients only. Set "
                "model.memory.sparse_grad: false (the dense gradient of the table is exact).",
            )
        self.encoder()  # d_model vs heads, memory layers vs depth: fail at load time

    @property
    def receptive_field(self) -> int:
        """Bars a decision depends on: ``plan.n_kv_layers * (window - 1) + 1``."""
        return self.plan.n_kv_layers * (self.window - 1) + 1

    def encoder(self) -> EncoderConfig:
        """The :class:`~models.EncoderConfig` this section describes (F = the env's features)."""
        return EncoderConfig(
            n_features=len(FEATURE_NAMES),
            d_model=self.d_model,
            plan=self.plan,
            window=self.window,
            memory_layers=self.memory_layers,
            memory=self.memory,
            compile=self.compile,
            autocast_bf16=self.autocast_bf16,
        )


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (stable-baselines3 names)."""

    learning_rate: float = 3e-4
    """Adam step size."""
    n_steps: int = 256
    """Env steps per env per rollout."""
    batch_size: int = 256
    """Samples per minibatch."""
    n_epochs: int = 4
    """Passes over each rollout."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    ent_coef: float = 0.0
    """Entropy bonus."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    target_kl: float | None = None
    """Early-stop an update when the KL exceeds this (None: never)."""
    compile_update: bool = False
    """torch.compile the update's forward: ~2x per CPU step after a 30-70 s compile."""

    def __post_init__(self) -> None:
        if self.n_steps < 2 or self.batch_size < 2 or self.n_epochs < 1:
            raise ValueError("n_steps and batch_size must be >= 2 and n_epochs >= 1")


@dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters (stable-baselines3 names)."""

    learning_rate: float = 3e-4
    """Adam step size."""
    buffer_size: int = 100_000
    """Replay buffer capacity (transitions)."""
    learning_starts: int = 1_000
    """Steps of random actions before learning."""
    batch_size: int = 256
    """Samples per gradient step."""
    tau: float = 0.005
    """Target network soft-update rate."""
    gamma: float = 0.99
    """Discount factor."""
    train_freq: int = 1
    """Env steps between updates."""
    gradient_steps: int = 1
    """Gradient steps per update."""
    ent_coef: str = "auto"
    """Entropy coefficient ("auto" or a number as a string, e.g. "0.01")."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, environment, model, algorithm, budget and seed."""

    name: str = "experiment"
    """Run name: runs land in ``runs/<name>/<timestamp>-s<seed>/``."""
    seed: int = 0
    """One seed drives numpy, torch, the envs and SB3."""
    algo: Literal["ppo", "sac"] = "ppo"
    """Algorithm."""
    total_steps: int = 100_000
    """Env steps to train for (summed over envs)."""
    n_envs: int = 8
    """Environments stepped in lockstep by the batched VecEnv."""
    eval_every: int = 10_000
    """Env steps between validation passes (0: only at the end)."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (0: only at the end)."""
    device: str = "cpu"
    """Torch device: cpu, cuda or auto."""
    threads: int = 1
    """CPU threads for torch and numba (0: leave the defaults). One is fastest for the small
    models here on a few cores, and a fixed count keeps results bit-identical."""
    reward_scale: float = 1.0
    """Multiplier on the rewards the learner sees (env rewards are log returns, ~1e-3 per
    bar; ~100 keeps the critic's error from swamping the advantages). Logs, validation and
    backtests use unscaled returns."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data section."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment section (see docs/environment.md)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model section."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO section (used when algo is ppo)."""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC section (used when algo is sac)."""

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.n_envs < 1:
            raise ValueError("total_steps and n_envs must be >= 1")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("eval_every and checkpoint_every must be >= 0")
        if not (math.isfinite(self.reward_scale) and self.reward_scale > 0):
            raise ValueError(f"reward_scale must be a finite number > 0, got {self.reward_scale}")
        check_name(self.name)
        if self.algo == "ppo" and self.total_steps < self.rollout_steps:
            raise ConfigError(
                "total_steps",
                f"{self.total_steps} is below one PPO rollout (n_envs * ppo.n_steps = "
                f"{self.n_envs} * {self.ppo.n_steps} = {self.rollout_steps}): the smallest "
                f"budget is total_steps={self.rollout_steps}; or lower n_envs or ppo.n_steps.",
            )
        rf = self.model.receptive_field
        if rf > self.env.window:
            raise ConfigError(
                "model.window",
                f"the encoder's receptive field is {rf} bars (plan.n_kv_layers * (window - 1) "
                f"+ 1 = {self.model.plan.n_kv_layers} * ({self.model.window} - 1) + 1) but "
                f"env.window is {self.env.window}: set env.window >= {rf}, or lower "
                f"model.window or the plan's KV layers.",
            )

    @property
    def rollout_steps(self) -> int:
        """Env steps per update: ``n_envs * ppo.n_steps`` (PPO), ``n_envs`` (SAC)."""
        return self.n_envs * (self.ppo.n_steps if self.algo == "ppo" else 1)

    @property
    def trained_steps(self) -> int:
        """Env steps training really takes: ``total_steps`` rounded up to whole rollouts."""
        return -(-self.total_steps // self.rollout_steps) * self.rollout_steps


def check_name(name: str) -> str:
    """A run name is a relative path of plain parts (``ar1`` or ``study/ar1``) that stays
    inside the runs folder: no ``..``, no absolute path, no empty part."""
    parts = name.replace("\\", "/").split("/")
    if (
        not name
        or Path(name).is_absolute()
        or name.startswith(("/", "\\", "~"))
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ConfigError(
            "name",
            f"{name!r} must be a plain relative name such as 'ar1_ppo' or 'study/ar1' (no "
            "'..', no absolute path): runs are written to runs/<name>/.",
        )
    return name


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML experiment (``yaml.safe_load``), apply ``key=value`` overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", f"no such file: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(str(path), f"is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(str(path), "must hold a mapping of config sections")
    return config_from_dict(apply_overrides(values, overrides or []))


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict (e.g. a run's saved ``config.yaml``) into a :class:`TrainConfig`."""
    return from_dict(TrainConfig, values)


def config_to_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (every field, defaults included)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
