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
from experiments.backtesting import BacktestRequest, count_trials, sample_of, write_ledgers
from experiments.cli import main


def test_compare_prints_iqm_and_probability_of_improvement(tmp_path, capsys) -> None:
    for name, shift in (("a", 0.5), ("b", 0.0)):
        doc = {"format": "mlkv-trader-backtest",
               "pass_totals": {"policy": [[shift + i * 0.01, shift] for i in range(4)]}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "a.json > " in out and "= 1.000" in out and "IQM" in out
    assert "1 comparison(s) made" in out


def test_compare_of_many_sets_says_how_many_comparisons(tmp_path, capsys) -> None:
    names = []
    for k, shift in enumerate((0.5, 0.0, 0.2, 0.1)):
        doc = {"format": "mlkv-trader-backtest",
               "pass_totals": {"policy": [[shift + i * 0.01, shift] for i in range(4)]}}
        (tmp_path / f"s{k}.json").write_text(json.dumps(doc))
        names.append(str(tmp_path / f"s{k}.json"))
    assert main(["compare", *names]) == 0
    out = capsys.readouterr().out
    assert "6 comparison(s) made" in out and "(Bonferroni: 0.05/6)" in out
    assert out.count(" CI ") >= 6
    assert main(["compare", *names[:2], "--comparisons", "10"]) == 0
    assert "10 comparison(s) made" in capsys.readouterr().out
    assert main(["compare", *names, "--comparisons", "2"]) == 2
    assert "at least the 6 pair(s)" in capsys.readouterr().err
    assert main(["compare", names[0]]) == 2


def test_compare_bad_file_is_refused(tmp_path, capsys) -> None:
    doc = {"format": "mlkv-trader-backtest", "pass_totals": {"policy": [[0.1, 0.2]]}}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "c.json").write_text("{}")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2
    assert "not an mlkv-trader backtest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"runs": ()}, "no finished runs"), ({"passes": 1}, "--passes must be >= 2"),
     ({"split": "train"}, "--split must be one of"),
     ({"configs_tried": 0}, "--configs-tried must be >= 1"),
     ({"bars_per_year": 0.0}, "--bars-per-year must be > 0")],
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


def _run(root: Path, name: str, evaluated: int | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    if evaluated is not None:
        (run / "selection.json").write_text(
            json.dumps({"selected_on": "validation", "checkpoints_evaluated": evaluated})
        )
    return run


@pytest.mark.parametrize(
    ("checkpoint", "configs", "expected"),
    [("best", 1, 10 * 8), ("final", 1, 10), ("best", 3, 3 * 10 * 8)],
)
def test_trials_count_configs_checkpoints_and_seeds(tmp_path, checkpoint, configs, expected):
    sweep = tmp_path / "sweep"
    runs = (_run(sweep, "seed-0", 8), _run(sweep, "seed-1", 6))
    (sweep / "sweep.json").write_text(json.dumps({"trials": {"configs": 1, "seeds": 10}}))
    assert count_trials(runs, checkpoint, configs) == expected
    lone = (_run(tmp_path / "other", "r", None),)  # trained before selection.json existed
    assert count_trials(lone, "best") == 1


@pytest.mark.parametrize(
    ("split", "checkpoint", "in_sample"),
    [("test", "best", False), ("test", "final", False), ("validation", "best", True),
     ("validation", "final", True), ("all", "best", True)],
)
def test_the_request_tells_the_verdict_its_sample(tmp_path, split, checkpoint, in_sample):
    run = _run(tmp_path, "r", 5)
    sample = sample_of(BacktestRequest(runs=(run,), split=split, checkpoint=checkpoint))
    assert sample.in_sample is in_sample
    assert sample.selected_on == ("validation" if checkpoint == "best" else None)
    assert sample.n_trials == (5 if checkpoint == "best" else 1)
