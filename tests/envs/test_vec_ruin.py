"""Test mode: a pass ruined twice before the others end keeps its first episode."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data import synthetic
from envs import EnvConfig, MarketReplayEnv, MarketReplayVecEnv


def crash_market() -> pd.DataFrame:
    """Calm GBM whose price triples at bar 150 (a short position is ruined there)."""
    candles = synthetic.gbm(600, vol=0.001, seed=0).copy()
    for col in ("open", "high", "low", "close"):
        candles.loc[candles.index[150:], col] *= 3.0
    o, c = candles["open"].to_numpy(), candles["close"].to_numpy()
    candles["high"] = np.maximum(candles["high"], np.maximum(o, c))
    candles["low"] = np.minimum(candles["low"], np.minimum(o, c))
    return candles


def test_env_ruined_twice_keeps_its_first_pass_in_the_completed_ledger() -> None:
    candles, config = crash_market(), EnvConfig(window=16, mode="test")
    vec = MarketReplayVecEnv(candles, config, n_envs=2, seed=0)
    vec.reset()
    ruins, finished = 0, np.zeros(2, dtype=bool)
    while not finished.all():
        short = -1.0 if ruins == 0 else -0.8  # env 1's later episodes differ from its first
        _, _, dones, _ = vec.step(np.array([[0.0], [short]], dtype=np.float32))
        ruins += int(dones[1] and not dones[0])
        finished |= dones
    assert ruins >= 2  # ruined, restarted, ruined again before env 0 reached the end
    single = MarketReplayEnv(candles, config)
    single.reset()
    terminated = False
    while not terminated:
        terminated = single.step(np.array([-1.0]))[2]
    pd.testing.assert_frame_equal(vec.ledger(1, completed=True), single.ledger())
    arrays = vec.ledger_arrays(completed=True)
    assert arrays["steps"][1] == len(single.ledger()) < arrays["steps"][0]
    # the next round starts afresh: the whole walk, both envs
    assert vec.get_state()["round_done"].tolist() == [0, 0]
