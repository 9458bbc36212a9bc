"""Streaming backtest statistics equal the stored-ledger ones; memory stays O(K * windows)."""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from evaluation import stats
from evaluation.backtest import (
    backtest,
    exposure_matched_random,
    merge_pass_groups,
    policy_passes,
    summarise,
    trial_sharpe_variance,
)
from evaluation.passes import iter_policy_passes
from evaluation.streaming import (
    HIST_RELATIVE_WIDTH,
    PassAccumulator,
    RandomTargets,
    plot_bars,
)
from evaluation.verdict import VerdictConfig, judge

from .conftest import ENV, make_policy

ROOT = Path(__file__).resolve().parents[2]
EXACT = {"rtol": 1e-9, "atol": 1e-12}


def _metrics_close(got: dict, want: dict, tail: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if key in ("var_95", "cvar_95"):  # histogram quantiles: one bin of resolution
            np.testing.assert_allclose(got[key], want[key], rtol=tail, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], want[key], **EXACT, err_msg=key)


def _passes(n_bars: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 passes: noisy, flat, constant-long, ruined half-way (zeros after), all positive."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 1e-3, (5, n_bars))
    p = np.clip(rng.normal(0.0, 0.6, (5, n_bars)), -1.0, 1.0)
    c = np.abs(rng.normal(0.0, 1e-5, (5, n_bars)))
    r[1], p[1], c[1] = 0.0, 0.0, 0.0
    p[2] = 1.0
    r[3, n_bars // 2 :], p[3, n_bars // 2 :], c[3, n_bars // 2 :] = 0.0, 0.0, 0.0
    r[4] = np.abs(r[4])
    return r, p, c


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_accumulated_metrics_equal_pass_metrics(chunk: int) -> None:
    n = 400
    r, p, c = _passes(n)
    times = pd.date_range("2020-01-01", periods=n, freq="h")
    acc = PassAccumulator(5, times, n_windows=4, keep_ledgers=True)
    for t0 in range(0, n, chunk):
        acc.update(r[:, t0 : t0 + chunk], p[:, t0 : t0 + chunk], c[:, t0 : t0 + chunk])
    summary = acc.finish()
    trials = np.array([0.01, -0.02, 0.03])
    for k in range(5):
        want = stats.pass_metrics(r[k], p[k], c[k], timestamps=times, trial_sharpes=trials)
        _metrics_close(summary.metrics(k, trials), want, tail=2 * HIST_RELATIVE_WIDTH)
    np.testing.assert_allclose(summary.totals, r.sum(axis=1), **EXACT)
    want_windows = np.add.reduceat(r, [0, 100, 200, 300], axis=1)
    np.testing.assert_allclose(summary.window_totals, want_windows, **EXACT)
    np.testing.assert_array_equal(summary.mean_returns, r.mean(axis=0))
    np.testing.assert_array_equal(summary.mean_positions, p.mean(axis=0))
    np.testing.assert_array_equal(summary.plot_cum, np.cumsum(r, axis=1))
    np.testing.assert_array_equal(summary.ledgers.log_returns, r)


def test_accumulated_metrics_would_catch_a_wrong_bar() -> None:
    """The comparison above is sharp: one changed bar breaks several metrics."""
    n = 400
    r, p, c = _passes(n)
    times = pd.date_range("2020-01-01", periods=n, freq="h")
    acc = PassAccumulator(5, times, n_windows=4)
    broken = r.copy()
    broken[0, 17] += 5e-3
    acc.update(broken, p, c)
    want = stats.pass_metrics(r[0], p[0], c[0], timestamps=times)
    with pytest.raises(AssertionError):
        _metrics_close(acc.finish().metrics(0), want, tail=2 * HIST_RELATIVE_WIDTH)


def _position_paths(k: int, n: int, seed: int) -> np.ndarray:
    """Positions with flat stretches (leading, inner, trailing), runs and an all-flat row."""
    rng = np.random.default_rng(seed)
    p = np.repeat(rng.uniform(-1.0, 1.0, size=(k, n // 5 + 1)), 5, axis=1)[:, :n]
    p[rng.random((k, n)) < 0.2] = 0.0
    p[0, :17] = 0.0  # starts flat: takes the first non-zero sign
    p[1, -30:] = 0.0  # ends flat: keeps the last sign
    p[2] = 0.0  # never in the market: +1
    return p


@pytest.mark.parametrize("chunks", [[5], [1, 1, 3], [2, 3], [4, 1]])
def test_random_targets_equal_one_shot_draw(chunks: list[int]) -> None:
    """The streamed random null is exposure_matched_random on the same generator, exactly
    (after the float32 rounding every target goes through), for any chunking and for any
    pass group (the group's rows of the full draw)."""
    k, n = 6, 5 * 37
    p = _position_paths(k, n, 11)
    want = exposure_matched_random(p, np.random.default_rng([3, 1])).astype(np.float32)
    edges = np.cumsum([0, *chunks]) * 37
    for rows in (None, np.array([2, 3, 4]), np.array([5])):
        targets = RandomTargets(np.random.default_rng([3, 1]), k, n, rows)
        sel = slice(None) if rows is None else rows
        for a, b in itertools.pairwise(edges):
            targets.add(p[sel, a:b])
        got = np.concatenate(
            [targets.take(a, b) for a, b in itertools.pairwise(edges)], axis=1
        )
        np.testing.assert_array_equal(got.astype(np.float32), want[sel])
        np.testing.assert_array_equal(
            targets.take(40, 90).astype(np.float32), want[sel][:, 40:90]
        )
    other = RandomTargets(np.random.default_rng([3, 2]), k, n)
    other.add(p)
    assert not np.array_equal(other.take(0, n).astype(np.float32), want)


def test_random_targets_match_exposure_and_turnover() -> None:
    """Issue 15's guarantee, streamed: same |p_t| bar by bar, direction changes at most +1."""
    k, n = 5, 400
    p = _position_paths(k, n, 5)
    targets = RandomTargets(np.random.default_rng(0), k, n)
    for a in range(0, n, 64):
        targets.add(p[:, a : a + 64])
    got = targets.take(0, n)
    np.testing.assert_array_equal(np.abs(got), np.abs(p).astype(np.float32))  # as played

    def flips(x: np.ndarray) -> int:
        s = np.sign(x[x != 0.0])
        return int(np.sum(s[1:] != s[:-1]))

    for row in range(k):
        assert flips(got[row]) <= flips(p[row]) + 2


def test_random_targets_need_the_whole_walk() -> None:
    targets = RandomTargets(np.random.default_rng(0), 2, 10)
    targets.add(np.ones((2, 4)))
    with pytest.raises(ValueError, match="4 of 10 bars"):
        targets.take(0, 5)
    with pytest.raises(ValueError, match="got 12 bars"):
        targets.add(np.ones((2, 8)))


def test_plot_bars_keep_every_bar_up_to_the_resolution() -> None:
    np.testing.assert_array_equal(plot_bars(50, 64), np.arange(50))
    bars = plot_bars(100_000, 512)
    assert bars[0] == 0 and bars[-1] == 99_999 and bars.size == 512
    assert np.all(np.diff(bars) > 0)


def _reference_summary(result) -> dict:
    """The numbers of backtest.json recomputed the stored-ledger way (the code before
    streaming): per-pass metrics on full arrays, judge on [S, K, N], bands from cumsum."""
    seeds = result.seeds
    led = [(s.stochastic.ledgers, s.deterministic.ledgers, s.random.ledgers) for s in seeds]
    bh, flat = result.buy_and_hold.ledgers, result.flat.ledgers
    bpy = result.settings["bars_per_year"]
    n_bars = bh.log_returns.shape[1]
    det_sharpes = np.array([stats.return_moments(det.log_returns[0])[0] for _, det, _ in led])
    n_trials = max(int(result.settings["n_trials"]), len(led))
    sr_var = trial_sharpe_variance(det_sharpes, n_bars)

    def metrics(p, i, deflate=False):
        m = stats.pass_metrics(p.log_returns[i], p.positions[i], p.costs[i], bars_per_year=bpy)
        if deflate:  # DSR against the real trials (issue 15)
            m["dsr"] = stats.deflated_sharpe_ratio(
                m["sharpe_per_bar"], int(m["n_bars"]), n_trials=n_trials, sr_variance=sr_var,
                skew=m["skew"], kurtosis=m["kurtosis"],
            )
        return m

    def mean_metrics(p):
        rows = [metrics(p, i) for i in range(p.n_passes)]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    rows = []
    for sto, det, rnd in led:
        rows += [metrics(det, 0, deflate=True), mean_metrics(sto), mean_metrics(rnd)]
    rows += [metrics(bh, 0), metrics(flat, 0)]
    verdict = judge(np.stack([sto.log_returns for sto, _, _ in led]),
                    np.stack([rnd.log_returns for _, _, rnd in led]), bh.log_returns[0],
                    np.stack([sto.positions for sto, _, _ in led]),
                    period=result.settings["timing_period"], sample=result.verdict.sample)

    def mean_of(fn, group):
        return float(np.mean([fn(row) for tri in led for row in tri[group].positions]))

    random_null = {
        "policy_exposure": mean_of(stats.exposure, 0),
        "random_exposure": mean_of(stats.exposure, 2),
        "policy_turnover": mean_of(stats.turnover, 0),
        "random_turnover": mean_of(stats.turnover, 2),
        "policy_costs": float(np.mean([sto.costs.sum(axis=1).mean() for sto, _, _ in led])),
        "random_costs": float(np.mean([rnd.costs.sum(axis=1).mean() for _, _, rnd in led])),
    }
    cum = np.concatenate([np.cumsum(sto.log_returns, axis=1) for sto, _, _ in led])
    rcum = np.concatenate([np.cumsum(rnd.log_returns, axis=1) for _, _, rnd in led])
    return {
        "rows": rows,
        "verdict": verdict.to_dict(),
        "band": np.quantile(cum, [0.05, 0.5, 0.95], axis=0),
        "random_band": np.quantile(rcum, [0.05, 0.5, 0.95], axis=0),
        "totals": [sto.log_returns.sum(axis=1) for sto, _, _ in led],
        "sigma": [np.nanmean(sto.sigma, axis=0) for sto, _, _ in led],
        "random_null": random_null,
    }


def _compare(doc: dict, want: dict) -> None:
    for got_row, want_row in zip(doc["metrics"]["rows"], want["rows"], strict=True):
        _metrics_close(got_row["metrics"], want_row, tail=2 * HIST_RELATIVE_WIDTH)
    got_v, want_v = doc["verdict"], want["verdict"]
    assert got_v["label"] == want_v["label"] and got_v["explanation"] == want_v["explanation"]
    for key in ("rho", "consistency_z", "excess_total", "excess_p", "timing_stat", "timing_p"):
        np.testing.assert_allclose(got_v[key], want_v[key], **EXACT, err_msg=key)
    for got_s, want_s in zip(got_v["seeds"], want_v["seeds"], strict=True):
        for key, value in want_s.items():
            np.testing.assert_allclose(got_s[key], value, **EXACT, err_msg=key)
    band = doc["series"]["policy_band"]
    np.testing.assert_allclose([band["q05"], band["q50"], band["q95"]], want["band"], atol=1e-7)
    band = doc["series"]["random_band"]
    np.testing.assert_allclose([band["q05"], band["q50"], band["q95"]], want["random_band"],
                               atol=1e-7)
    for got_t, want_t in zip(doc["pass_totals"]["policy"], want["totals"], strict=True):
        np.testing.assert_allclose(got_t, want_t, atol=1e-7)
    for got_s, want_s in zip(doc["series"]["sigma"], want["sigma"], strict=True):
        np.testing.assert_allclose(got_s, want_s, rtol=1e-6)
    for key, value in want["random_null"].items():  # from the streaming accumulators
        np.testing.assert_allclose(doc["random_null"][key], value, **EXACT, err_msg=key)


def test_streaming_backtest_equals_stored_ledgers(test_candles) -> None:
    policies = [make_policy(0), make_policy(1)]
    result = backtest(policies, test_candles, passes=4, env_config=ENV, seed=3, keep_ledgers=True)
    doc = json.loads(json.dumps(summarise(result)))
    want = _reference_summary(result)
    _compare(doc, want)
    # the random passes played issue 15's null on the policy passes' stored positions
    for i, s in enumerate(result.seeds):
        sto, rnd = s.stochastic.ledgers, s.random.ledgers
        targets = exposure_matched_random(sto.positions, np.random.default_rng([3, i]))
        np.testing.assert_array_equal(rnd.positions, targets.astype(np.float32))
    # sharp: a reference on other passes (another seed) does not match
    other = backtest(policies, test_candles, passes=4, env_config=ENV, seed=4, keep_ledgers=True)
    with pytest.raises(AssertionError):
        _compare(doc, _reference_summary(other))


def test_streaming_without_ledgers_gives_the_same_document(test_candles) -> None:
    policies = [make_policy(0), make_policy(1)]
    kept = summarise(backtest(policies, test_candles, passes=4, env_config=ENV, seed=3,
                              keep_ledgers=True))
    lean_result = backtest(policies, test_candles, passes=4, env_config=ENV, seed=3)
    assert all(s.stochastic.ledgers is None for s in lean_result.seeds)
    lean = summarise(lean_result)
    kept.pop("created"), lean.pop("created")
    assert json.dumps(kept, sort_keys=True) == json.dumps(lean, sort_keys=True)


def test_pass_groups_merge_to_the_single_run(test_candles) -> None:
    policy = make_policy(0)
    kwargs = {"index": 1, "passes": 5, "env_config": ENV, "seed": 2, "keep_ledgers": True}
    whole = policy_passes(policy, test_candles, **kwargs)
    groups = [policy_passes(policy, test_candles, pass_slice=slice(a, b), **kwargs)
              for a, b in ((0, 2), (2, 3), (3, 5))]
    assert groups[0].deterministic is None and groups[-1].deterministic is not None
    merged = merge_pass_groups(groups)
    for name in ("stochastic", "deterministic", "random"):
        a, b = getattr(merged, name), getattr(whole, name)
        np.testing.assert_array_equal(a.ledgers.log_returns, b.ledgers.log_returns)
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.window_totals, b.window_totals)
        np.testing.assert_array_equal(a.var_95, b.var_95)
        np.testing.assert_allclose(a.mean_returns, b.mean_returns, rtol=1e-12, atol=1e-18)
        np.testing.assert_allclose(a.mean_positions, b.mean_positions, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="deterministic"):
        merge_pass_groups(groups[:2])


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    sys.path[:0] = [{root!r}, {tests!r}]
    torch.set_num_threads(1)
    from conftest import ENV, make_policy
    from data import synthetic
    from evaluation import backtest
    policy = make_policy(0)
    backtest(policy, synthetic.gbm(300, seed=1), passes={k}, env_config=ENV, seed=0)  # warm up
    candles = synthetic.gbm({n}, seed=2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = backtest(policy, candles, passes={k}, env_config=ENV, seed=0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"grew": (after - before) * 1024, "n": result.settings["n_bars"]}}))
    """
)


@pytest.mark.slow
def test_peak_memory_of_a_long_backtest_stays_within_the_streaming_bound() -> None:
    """100k bars x (K stochastic + 1 deterministic + K random) passes, in a subprocess.

    Stored ledgers cost ~200 bytes per pass-bar (issue 20); streaming keeps
    O(K * (n_windows + plot points + histogram bins) + n_bars) numbers, plus, for one seed
    at a time, the policy passes' |p_t| (float32) and direction (int8) that issue 15's
    shifted random null needs: 5 bytes per pass-bar. The bound below is that formula with
    generous constants (plus the verdict's bootstrap, which does not grow with K), well
    under what ledgers would need.
    """
    from evaluation.streaming import HIST_BINS, PLOT_POINTS

    k, n = 32, 100_000
    script = _MEMORY_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests" / "evaluation"), k=k,
                                   n=n)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=900)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    passes = 2 * k + 3  # stochastic, deterministic, random, buy-and-hold, flat
    per_pass = 8 * (2 * HIST_BINS + PLOT_POINTS + 4 + 24)  # histograms, plot points, state
    # per bar: candles, features, the encoder's activations over the whole series (the
    # largest: ~1.2 KB at d_model 16), per-bar means of each group, times
    per_bar = 1536
    # the verdict's block bootstrap: ~6 int64 arrays [n_boot, n_bars / block length]
    blocks = 1.2 * n / n ** (1 / 3)
    bootstrap = 6 * 8 * VerdictConfig().n_boot * blocks
    null_path = 5 * k * n  # RandomTargets of one seed (freed before the next)
    bound = passes * per_pass + n * per_bar + bootstrap + null_path + 64 * 2**20  # + slack
    ledgers = 200 * passes * n  # what storing every pass-bar would take
    assert measured["grew"] < bound < ledgers, (measured, bound, ledgers)


def test_streamed_passes_use_a_private_rng(test_candles) -> None:
    """Issue 15's RNG guarantee on the streaming path: the sampled passes come from a
    private generator seeded like ``torch.manual_seed(seed)``, so torch draws made by the
    caller between chunks change nothing, and the global state is left as it was."""
    policy = make_policy(0)
    mask = np.arange(4) == 3
    kwargs = {"n_passes": 4, "deterministic": mask, "seed": 9, "chunk": 16}
    torch.manual_seed(0)
    state = torch.get_rng_state()
    plain = list(iter_policy_passes(policy, test_candles, ENV, **kwargs))
    assert torch.equal(torch.get_rng_state(), state)
    interleaved = []
    for chunk in iter_policy_passes(policy, test_candles, ENV, **kwargs):
        torch.randn(7)  # the caller's own draws between chunks
        interleaved.append(chunk)
    for a, b in zip(plain, interleaved, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    # the same draws as the global generator seeded with the pass seed
    torch.manual_seed(9)
    eps = torch.randn(3)
    first = plain[0]
    want = np.clip(first.mean[:3, 0] + eps.numpy() * first.sigma[:3, 0], -1.0, 1.0)
    np.testing.assert_allclose(first.positions[:3, 0], want, rtol=1e-6, atol=1e-7)


def test_lockstep_policies_get_the_numbers_each_gets_alone(test_candles, monkeypatch) -> None:
    """backtest() walks stackable policies together (one actor call and one env call per
    step for all); each policy's passes are bit for bit what policy_passes gives it alone,
    which is what a distributed backtest (one task per policy) runs."""
    bt = importlib.import_module("evaluation.backtest")  # the module, not the function

    policies = [make_policy(s) for s in range(3)]
    assert bt.lockstep_groups(policies, 4, 100) == [[0, 1, 2]]
    together = backtest(policies, test_candles, passes=4, env_config=ENV, seed=3,
                        keep_ledgers=True)
    for i, policy in enumerate(policies):
        alone = policy_passes(policy, test_candles, index=i, passes=4, env_config=ENV, seed=3,
                              keep_ledgers=True)
        for name in ("stochastic", "deterministic", "random"):
            a, b = getattr(together.seeds[i], name), getattr(alone, name)
            for field in ("positions", "log_returns", "costs", "mean", "sigma"):
                np.testing.assert_array_equal(getattr(a.ledgers, field),
                                              getattr(b.ledgers, field), err_msg=field)
            np.testing.assert_array_equal(a.state, b.state)
    assert not np.array_equal(together.seeds[0].stochastic.ledgers.positions,
                              together.seeds[1].stochastic.ledgers.positions)
    # a group holds at most LOCKSTEP_BYTES of null paths: here one policy per group
    monkeypatch.setattr(bt, "LOCKSTEP_BYTES", 5 * 4 * 100 * 2 - 1)
    assert bt.lockstep_groups(policies, 4, 100) == [[0], [1], [2]]
    monkeypatch.setattr(bt, "LOCKSTEP_BYTES", 5 * 4 * 100 * 2)
    assert bt.lockstep_groups(policies, 4, 100) == [[0, 1], [2]]


def test_policies_that_do_not_stack_walk_alone(test_candles) -> None:
    from evaluation.backtest import lockstep_groups
    from evaluation.passes import ScheduledActions

    small, other = make_policy(0), make_policy(1)
    other.action_net = torch.nn.Sequential(torch.nn.Linear(16, 1), torch.nn.SiLU())
    plain = ScheduledActions(np.zeros((1, 1)))
    assert lockstep_groups([small, other, make_policy(2), plain], 4, 100) == [[0], [1], [2], [3]]
