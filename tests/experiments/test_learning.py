"""Learning evidence: the MLKV PPO agent finds a planted edge, and claims none on a random walk.

Marked slow (each trains for about a minute on a 2-core CPU); CI runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.config import load_config
from experiments.demo import CONFIGS
from experiments.evaluation.backtest import backtest
from experiments.evaluation.runs import load_policy
from experiments.train import load_split, train

BUDGET = ["total_steps=61440", "eval_every=0", "checkpoint_every=0"]


def train_and_backtest(tmp_path: Path, *overrides: str):
    config = load_config(CONFIGS / "ar1_ppo.yaml", [*BUDGET, *overrides])
    run = train(config, runs_root=tmp_path, show_progress=False)
    test = load_split(config.data).test
    policy, _ = load_policy(run, candles=test, prefer="final")
    return backtest(policy, test, passes=10, env_config=config.env, seed=0)


@pytest.mark.slow
def test_learns_the_planted_ar1_edge(tmp_path: Path) -> None:
    result = train_and_backtest(tmp_path)
    seed = result.seeds[0]
    policy = seed.stochastic.log_returns.sum(axis=1)  # [K] total log return of each pass
    random = seed.random.log_returns.sum(axis=1)
    hold = result.buy_and_hold.log_returns.sum()
    # the edge at phi 0.3 is worth ~0.8 log over the test split before costs
    assert policy.mean() > hold + 0.1
    assert policy.mean() > random.mean() + 0.1
    assert np.all(policy > random.max())  # every pass beats every random pass


@pytest.mark.slow
def test_claims_no_edge_on_a_random_walk(tmp_path: Path) -> None:
    result = train_and_backtest(tmp_path, "name=gbm_ppo", "data.source=synthetic:gbm",
                                "data.params={vol: 0.002}")
    assert result.verdict.label != "LEARNED"
    assert not result.verdict.checks["edge_vs_buy_and_hold"].passed
