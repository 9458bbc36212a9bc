"""Backtester: encode-once == per-step, random passes keep exposure, determinism, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.backtest import backtest, exposure_matched_random, summarise
from evaluation.passes import ScheduledActions, run_policy_passes
from evaluation.report import render_report
from evaluation.verdict import Sample

from .conftest import ENV, make_policy


@pytest.mark.parametrize("deterministic", [True, False, np.array([False, False, True])])
def test_encode_once_equals_per_step(test_candles, deterministic) -> None:
    policy = make_policy()
    fast = run_policy_passes(policy, test_candles, ENV, n_passes=3, deterministic=deterministic,
                             seed=5, fast=True)
    slow = run_policy_passes(policy, test_candles, ENV, n_passes=3, deterministic=deterministic,
                             seed=5, fast=False)
    np.testing.assert_allclose(fast.positions, slow.positions, atol=1e-5)
    np.testing.assert_allclose(fast.log_returns, slow.log_returns, atol=1e-7)
    assert fast.log_returns.shape == (3, len(fast.times))
    assert np.isfinite(fast.sigma).all() and (fast.sigma > 0).all()
    if not np.all(deterministic):  # the passes really differ from each other
        assert np.ptp(fast.log_returns.sum(axis=1)) > 0
    if np.ndim(deterministic):  # the masked pass acts with the mean
        np.testing.assert_allclose(fast.positions[2], np.clip(fast.mean[2], -1, 1), atol=1e-2)


def test_per_step_path_differs_with_another_seed(test_candles) -> None:
    policy = make_policy()
    a = run_policy_passes(policy, test_candles, ENV, n_passes=2, deterministic=False, seed=5)
    b = run_policy_passes(policy, test_candles, ENV, n_passes=2, deterministic=False, seed=6)
    assert not np.allclose(a.positions, b.positions)


def test_scheduled_baselines(test_candles) -> None:
    flat = run_policy_passes(ScheduledActions(np.zeros((1, 1))), test_candles, ENV, n_passes=1,
                             deterministic=True, seed=0)
    assert np.all(flat.log_returns == 0.0) and np.all(flat.costs == 0.0)
    hold = run_policy_passes(ScheduledActions(np.ones((1, 1))), test_candles, ENV, n_passes=1,
                             deterministic=True, seed=0)
    close = test_candles["close"].to_numpy()
    first = test_candles.index.get_loc(hold.times[0])
    opens = test_candles["open"].to_numpy()
    gross = np.log(close[-1] / opens[first])  # long from the first fill to the last close
    cost = ENV.trade_cost_bps * 1e-4
    assert hold.log_returns.sum() == pytest.approx(gross + np.log1p(-cost), abs=1e-4)


def test_exposure_matched_random_keeps_exposure() -> None:
    rng = np.random.default_rng(0)
    pos = np.array([[0.5, 0.5, -0.2, -0.3, 0.0, 0.7, 0.7, 0.7]] * 400)
    rnd = exposure_matched_random(pos, rng)
    np.testing.assert_allclose(np.abs(rnd), np.abs(pos))  # bar by bar
    assert np.all(rnd[:, 4] == 0.0)
    # the direction at each bar is random across passes
    assert 0.4 < np.mean(rnd[:, 0] > 0) < 0.6 and 0.4 < np.mean(rnd[:, 5] > 0) < 0.6


def _slow_policy(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """A decisive policy that holds its direction ~50 bars: 0.8 sign(run) + noise 0.1."""
    flips = rng.random(n) < 1 / 50
    direction = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0)
    return np.clip(0.8 * direction + 0.1 * rng.standard_normal((k, n)), -1, 1)


def test_random_null_matches_a_slow_policys_turnover() -> None:
    rng = np.random.default_rng(1)
    pos = _slow_policy(rng, 20, 2000)
    turnover = np.abs(np.diff(pos, prepend=0.0, axis=1)).sum(axis=1).mean()
    rnd = exposure_matched_random(pos, np.random.default_rng(2))
    rnd_turnover = np.abs(np.diff(rnd, prepend=0.0, axis=1)).sum(axis=1).mean()
    assert abs(rnd_turnover / turnover - 1.0) < 0.2
    np.testing.assert_allclose(np.abs(rnd), np.abs(pos))
    # an independent sign per bar (the old null) flips every other bar: ~5x the turnover
    iid = np.abs(pos) * np.random.default_rng(3).choice([-1.0, 1.0], pos.shape)
    assert np.abs(np.diff(iid, prepend=0.0, axis=1)).sum(axis=1).mean() > 3 * turnover


def test_same_seed_same_json(test_candles) -> None:
    policies = [make_policy(0), make_policy(1)]
    a = summarise(backtest(policies, test_candles, passes=3, env_config=ENV, seed=2))
    b = summarise(backtest(policies, test_candles, passes=3, env_config=ENV, seed=2))
    a.pop("created"), b.pop("created")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    assert a["verdict"]["label"] in {"LEARNED", "CONSISTENT-BUT-NO-EDGE", "RANDOM", "INCONCLUSIVE"}
    assert len(a["pass_totals"]["policy"]) == 2 and len(a["pass_totals"]["policy"][0]) == 3


def test_bad_inputs(test_candles) -> None:
    with pytest.raises(ValueError, match="passes must be an integer >= 2"):
        backtest(make_policy(), test_candles, passes=1, env_config=ENV)
    with pytest.raises(ValueError, match="names"):
        backtest([make_policy()], test_candles, passes=2, env_config=ENV, names=["a", "b"])
    with pytest.raises(ValueError):
        backtest(make_policy(), test_candles.iloc[:20], passes=2, env_config=ENV)


def test_report_escapes_every_value(test_candles) -> None:
    evil = "<script>alert('x')</script>"
    summary = summarise(backtest([make_policy()], test_candles, passes=2, env_config=ENV,
                                 names=[evil]))
    summary["settings"]["passes"] = evil
    summary["settings"]["data"] = evil
    summary["verdict"]["label"] = evil
    check = next(iter(summary["verdict"]["checks"].values()))
    check["threshold"] = evil
    page = render_report(summary)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_in_sample_backtests_are_labelled(test_candles) -> None:
    policies = [make_policy(0), make_policy(1)]
    sample = Sample(split="validation", checkpoint="best", selected_on="validation", n_trials=40)
    result = backtest(policies, test_candles, passes=3, env_config=ENV, seed=2, sample=sample)
    summary = summarise(result)
    assert summary["verdict"]["in_sample"] is True and summary["settings"]["in_sample"] is True
    assert summary["verdict"]["explanation"].startswith("IN-SAMPLE")
    assert summary["verdict"]["label"] != "LEARNED"
    assert summary["metrics"]["dsr_trials"]["n_trials"] == 40
    page = render_report(summary)
    assert "IN-SAMPLE: these bars are not an untouched test split" in page
    assert "turnover per pass" in page  # the report shows what the random null matches
    clean = summarise(backtest(policies, test_candles, passes=3, env_config=ENV, seed=2))
    assert clean["verdict"]["in_sample"] is False
    assert "IN-SAMPLE: these bars" not in render_report(clean)
    # DSR deflates for the recorded trials, not for the K passes
    det = [r for r in summary["metrics"]["rows"] if r["name"].endswith("(deterministic)")]
    det_clean = [r for r in clean["metrics"]["rows"] if r["name"].endswith("(deterministic)")]
    assert det[0]["metrics"]["dsr"] < det_clean[0]["metrics"]["dsr"]
    assert clean["metrics"]["dsr_trials"]["n_trials"] == 2  # the two seeds judged
