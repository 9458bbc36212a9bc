"""`mlkv-trader compare` and the backtest request: typed, validated, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data import synthetic
from envs import EnvConfig
from evaluation import backtest
from experiments.backtesting import BacktestRequest, write_ledgers
from experiments.cli import main


def test_compare_prints_iqm_and_probability_of_improvement(tmp_path, capsys) -> None:
    for name, shift in (("a", 0.5), ("b", 0.0)):
        doc = {"format": "mlkv-trader-backtest",
               "pass_totals": {"policy": [[shift + i * 0.01, shift] for i in range(4)]}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "P(A > B) = 1.000" in out and "IQM" in out
    (tmp_path / "c.json").write_text("{}")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2
    assert "not an mlkv-trader backtest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"runs": ()}, "no finished runs"), ({"passes": 1}, "--passes must be >= 2"),
     ({"split": "train"}, "--split must be one of")],
)
def test_bad_request_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BacktestRequest(**{"runs": (Path("r"),), **kwargs})


def test_pass_groups_must_fit_the_passes() -> None:
    with pytest.raises(ValueError, match="--pass-groups must be in"):
        BacktestRequest(runs=(Path("r"),), passes=3, pass_groups=4)
    assert BacktestRequest(runs=(Path("r"),), passes=3, pass_groups=3).pass_groups == 3


class _Coin:
    """A generic ``predict`` policy: a random position each step (from torch's seeded RNG)."""

    def predict(self, obs: dict, deterministic: bool = True) -> tuple[np.ndarray, None]:
        n = len(obs["account"])
        return (np.zeros((n, 1)) if deterministic else torch.rand(n, 1).numpy() * 2 - 1), None


def test_kept_ledgers_are_written_and_match_the_summary(tmp_path: Path) -> None:
    candles = synthetic.gbm(120, seed=4)
    env = EnvConfig(window=16)
    result = backtest([_Coin(), _Coin()], candles, passes=3, env_config=env, seed=0,
                      keep_ledgers=True)
    path = write_ledgers(result, tmp_path / "ledgers.npz")
    with np.load(path) as saved:
        assert saved["seed1/stochastic/log_returns"].shape == (3, result.settings["n_bars"])
        assert len(saved["times"]) == result.settings["n_bars"]
        np.testing.assert_allclose(saved["seed1/stochastic/log_returns"].sum(axis=1),
                                   result.seeds[1].stochastic.totals)
        assert np.all(saved["flat/positions"] == 0.0)
    lean = backtest([_Coin(), _Coin()], candles, passes=3, env_config=env, seed=0)
    with pytest.raises(ValueError, match="did not keep ledgers"):
        write_ledgers(lean, tmp_path / "none.npz")
