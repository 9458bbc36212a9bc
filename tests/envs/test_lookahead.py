"""No look-ahead: changing any bar after t changes nothing observed up to t."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import synthetic
from envs import EnvConfig, MarketReplayEnv, compute_features
from envs.features import FIRST_VALID

N_BARS = 160
CONFIG = EnvConfig(window=12, mode="test", commission_bps=2.0, financing_bps_per_bar=0.3)
FIRST = FIRST_VALID + CONFIG.window - 1  # last bar of the first observation
BASE = synthetic.gbm(N_BARS, vol=0.003, seed=21)


def _perturbed_after(t: int, seed: int, scale: float) -> pd.DataFrame:
    """Bars 0..t of BASE, then other valid candles (another path, another price level)."""
    other = synthetic.gbm(N_BARS, vol=0.01, seed=seed)
    other[["open", "high", "low", "close"]] *= scale
    other["volume"] *= 3.0
    out = BASE.copy()
    out.iloc[t + 1 :] = other.iloc[t + 1 :].to_numpy()
    return out


def _trajectory(candles: pd.DataFrame, actions: np.ndarray, until_bar: int) -> list[tuple]:
    """(obs, reward, info) of every observation ending at a bar <= until_bar."""
    env = MarketReplayEnv(candles, CONFIG)
    obs, info = env.reset()
    seen = [(obs, None, info)]
    for a in actions:
        if env.bar_index >= until_bar:
            break
        obs, reward, _, _, info = env.step(np.array([a]))
        seen.append((obs, reward, info))
    return seen


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(min_value=FIRST, max_value=N_BARS - 2),
    seed=st.integers(min_value=0, max_value=10_000),
    scale=st.floats(min_value=0.5, max_value=2.0),
    action_seed=st.integers(min_value=0, max_value=10_000),
)
def test_changing_bars_after_t_changes_nothing_up_to_t(
    t: int, seed: int, scale: float, action_seed: int
) -> None:
    changed = _perturbed_after(t, seed, scale)
    f_base, _ = compute_features(BASE)
    f_changed, _ = compute_features(changed)
    np.testing.assert_array_equal(f_base[: t + 1], f_changed[: t + 1])

    actions = np.random.default_rng(action_seed).uniform(-1.5, 1.5, N_BARS)
    before = _trajectory(BASE, actions, until_bar=t + 1)
    after = _trajectory(changed, actions, until_bar=t + 1)
    assert len(before) == len(after) == t - FIRST + 2
    for (o1, r1, i1), (o2, r2, i2) in zip(before[:-1], after[:-1], strict=True):  # up to bar t
        np.testing.assert_array_equal(o1["candles"], o2["candles"])
        np.testing.assert_array_equal(o1["account"], o2["account"])
        assert r1 == r2 and i1 == i2
    # sensitivity: the step into bar t + 1 does see the change (it fills and marks there)
    (o1, r1, i1), (o2, r2, i2) = before[-1], after[-1]
    assert not np.array_equal(o1["candles"], o2["candles"])
    assert i1["equity"] != i2["equity"] or abs(actions[t - FIRST]) < 1e-12
