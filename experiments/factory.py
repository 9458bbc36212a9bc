"""Construction from a config: the market and its split, the batched env, the agent, a policy.

Everything here is a pure function of a :class:`~experiments.config.TrainConfig` (and the
data it names): training, backtests, sweeps and studies build through it, so one config
always means the same market, env and network.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.sac.policies import MultiInputPolicy as SACMultiInputPolicy

from agents import MLKVPPO, MLKVActorCriticPolicy, MLKVExtractor, ScaledReward
from data import Split, chronological_split, datasets, load_candles, synthetic
from envs import MarketReplayVecEnv
from experiments.config import SYNTHETIC_PREFIX, DataConfig, ModelConfig, TrainConfig

#: The parts of the data a backtest can run on (``all`` holds the training bars).
SPLITS = ("test", "validation", "all")


def check_source(cfg: DataConfig) -> None:
    """Fail early (before a run or sweep directory exists) when ``data.source`` names
    nothing: not an embedded dataset, not a synthetic market, not an existing file."""
    if cfg.source.startswith(SYNTHETIC_PREFIX) or cfg.source in datasets.available():
        return
    if not Path(cfg.source).exists():
        raise ValueError(
            f"data.source: {cfg.source!r} is neither an embedded dataset "
            f"({', '.join(datasets.available())}), a file, nor 'synthetic:gbm|ar1|regime'."
        )


def load_market(cfg: DataConfig) -> pd.DataFrame:
    """Candles named by a data config: an embedded dataset, a file, or a synthetic market."""
    if cfg.source.startswith(SYNTHETIC_PREFIX):
        name = cfg.source[len(SYNTHETIC_PREFIX) :]
        return synthetic.generate(name, cfg.n_bars, seed=cfg.market_seed, **cfg.params)
    if cfg.source in datasets.available():
        return datasets.load(cfg.source)
    check_source(cfg)
    return load_candles(cfg.source, time_format=cfg.time_format)


def load_split(cfg: DataConfig) -> Split:
    """The chronological train/validation/test split of the configured market."""
    return chronological_split(load_market(cfg), cfg.fractions, embargo=cfg.embargo)


def candles_to_test(
    config: TrainConfig,
    data: str | None = None,
    split: Literal["test", "validation", "all"] = "test",
) -> pd.DataFrame:
    """The bars to test on: the run's own data (or the source ``data``), restricted to ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    cfg = (
        config.data
        if data is None
        else DataConfig(source=data, fractions=config.data.fractions, embargo=config.data.embargo)
    )
    if split == "all":
        return load_market(cfg)
    return getattr(load_split(cfg), split)


def policy_kwargs(model: ModelConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for :class:`MLKVActorCriticPolicy` from the model section."""
    return {
        "encoder": model.encoder(),
        "account_hidden": (model.account_hidden,),
        "net_arch": list(model.net_arch),
        "log_std_range": (model.log_std_min, model.log_std_max),
        "log_std_init": model.log_std_init,
    }


def sac_policy_kwargs(model: ModelConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for SAC's ``MultiInputPolicy``: the MLKV features extractor
    under SAC's own squashed-Gaussian actor and twin critics."""
    return {
        "features_extractor_class": MLKVExtractor,
        "features_extractor_kwargs": {
            "encoder": model.encoder(),
            "account_hidden": (model.account_hidden,),
        },
        "net_arch": list(model.net_arch),
    }


def build_agent(config: TrainConfig, venv: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm named by ``config.algo`` with the MLKV policy, seeded by the config."""
    if config.algo == "ppo":
        return MLKVPPO(
            MLKVActorCriticPolicy,
            venv,
            **asdict(config.ppo),
            policy_kwargs=policy_kwargs(config.model),
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


def build_policy(
    config: TrainConfig, observation_space: spaces.Dict, action_space: spaces.Box
) -> BasePolicy:
    """The policy network of ``config`` alone (no algorithm), e.g. to load weights into.

    PPO runs give the MLKV actor-critic; SAC runs SB3's SAC policy with the MLKV extractor.
    """
    args = (observation_space, action_space, lambda _: 0.0)
    if config.algo == "sac":
        return SACMultiInputPolicy(*args, **sac_policy_kwargs(config.model))
    return MLKVActorCriticPolicy(*args, **policy_kwargs(config.model))


def make_venv(candles: pd.DataFrame, config: TrainConfig) -> VecEnv:
    """The batched training env (train mode), seeded by the run's seed; rewards scaled by
    ``config.reward_scale`` when it is not 1."""
    env_cfg = replace(config.env, mode="train")
    venv = MarketReplayVecEnv(candles, env_cfg, n_envs=config.n_envs, seed=config.seed)
    return venv if config.reward_scale == 1.0 else ScaledReward(venv, config.reward_scale)
