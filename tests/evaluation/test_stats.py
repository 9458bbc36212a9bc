"""Metrics of evaluation.stats against hand-computed and published values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from evaluation import stats

# r: mean 0.002; deviations 0.008, -0.022, 0.028, -0.002, -0.012 -> sum of squares 1480e-6
R = np.array([0.01, -0.02, 0.03, 0.0, -0.01])
SD = math.sqrt(1480e-6 / 4)


# --------------------------------------------------------------------------- ratios


def test_sharpe_per_bar_and_annualised_by_hand():
    assert stats.sharpe_ratio(R) == pytest.approx(0.002 / SD, rel=1e-12)
    assert stats.sharpe_ratio(R, 252) == pytest.approx(0.002 / SD * math.sqrt(252), rel=1e-12)


def test_sharpe_of_constant_returns_is_nan_not_zero():
    assert math.isnan(stats.sharpe_ratio(np.full(10, 0.001)))


def test_sortino_uses_downside_deviation_over_all_bars():
    # min(r, 0)^2 = [0, 4e-4, 0, 0, 1e-4] -> mean 1e-4 -> DD = 0.01
    assert stats.sortino_ratio(R) == pytest.approx(0.002 / 0.01, rel=1e-12)
    assert stats.sortino_ratio(R, 4) == pytest.approx(0.4, rel=1e-12)
    assert stats.sortino_ratio(np.array([0.01, 0.02])) == math.inf


def test_annualised_return_volatility_and_cagr():
    assert stats.total_log_return(R) == pytest.approx(0.01)
    assert stats.annualized_return(R, 100) == pytest.approx(0.2)
    assert stats.cagr(R, 100) == pytest.approx(math.exp(0.2) - 1)
    assert stats.annualized_volatility(R, 100) == pytest.approx(SD * 10)


def test_cagr_matches_empyrical_definition():
    # empyrical: (E_n / E_0) ** (1 / years) - 1 with years = n / bars_per_year
    r = np.random.default_rng(0).normal(0.0005, 0.01, 500)
    years = 500 / 252
    assert stats.cagr(r, 252) == pytest.approx(math.exp(r.sum()) ** (1 / years) - 1, rel=1e-10)


# --------------------------------------------------------------------------- drawdowns


def test_drawdown_and_max_drawdown_by_hand():
    # log equity 0.01, -0.01, 0.02, 0.02, 0.01; running peak 0.01, 0.01, 0.02, 0.02, 0.02
    dd = stats.drawdown(R)
    np.testing.assert_allclose(dd, np.expm1([0.0, -0.02, 0.0, 0.0, -0.01]), atol=1e-15)
    assert stats.max_drawdown(R) == pytest.approx(math.expm1(-0.02))


def test_drawdown_counts_a_loss_on_the_first_bar():
    # equity starts at 1, so a first-bar loss is already a drawdown
    assert stats.max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(math.expm1(-0.1))


def test_max_drawdown_duration_is_longest_underwater_run():
    # log equity 0.01, -0.01, -0.005, -0.001, 0.019, 0.009 -> underwater bars 1-3 and 5
    r = np.array([0.01, -0.02, 0.005, 0.004, 0.02, -0.01])
    assert stats.max_drawdown_duration(r) == 3
    assert stats.max_drawdown_duration(np.array([0.01, 0.02])) == 0
    # an unrecovered drawdown counts to the last bar
    assert stats.max_drawdown_duration(np.array([0.01, -0.02, 0.0, 0.0])) == 3


def test_calmar_is_cagr_over_max_drawdown():
    assert stats.calmar_ratio(R, 100) == pytest.approx((math.exp(0.2) - 1) / abs(math.expm1(-0.02)))
    assert math.isnan(stats.calmar_ratio(np.array([0.01, 0.02]), 100))


# --------------------------------------------------------------------------- trading


def test_hit_rate_and_profit_factor_by_hand():
    assert stats.hit_rate(R) == pytest.approx(0.5)  # 2 wins of 4 non-zero bars
    assert stats.profit_factor(R) == pytest.approx(0.04 / 0.03)
    assert math.isnan(stats.hit_rate(np.zeros(5)))
    assert stats.profit_factor(np.array([0.01, 0.0])) == math.inf


def test_turnover_trades_exposure_by_hand():
    p = np.array([0.5, 0.5, -0.5, 0.0, 1.0])  # fills 0.5, 0, 1, 0.5, 1 from a flat start
    assert stats.turnover(p) == pytest.approx(3.0)
    assert stats.turnover(p, initial_position=0.5) == pytest.approx(2.5)
    assert stats.n_trades(p) == 4
    assert stats.exposure(p) == pytest.approx(0.5)
    assert stats.time_in_market(p) == pytest.approx(0.8)


def test_historical_var_and_cvar_by_hand():
    # sorted: -0.02, -0.01, 0, 0.01, 0.03; 5% quantile at position 0.2 -> -0.018
    assert stats.value_at_risk(R) == pytest.approx(-0.018)
    assert stats.conditional_value_at_risk(R) == pytest.approx(-0.02)
    r = np.linspace(-1, 1, 101)  # 5% quantile -0.9; values <= -0.9 average -0.95
    assert stats.value_at_risk(r) == pytest.approx(-0.9)
    assert stats.conditional_value_at_risk(r) == pytest.approx(-0.95)


def test_infer_bars_per_year_from_timestamps():
    daily = pd.date_range("2017-01-01", periods=366, freq="D")  # 365 days apart
    assert stats.infer_bars_per_year(daily) == pytest.approx(365.25)
    hourly = pd.date_range("2017-01-02", periods=24 * 5 + 1, freq="h")  # 5 days
    assert stats.infer_bars_per_year(hourly.values) == pytest.approx(24 * 365.25)
    with pytest.raises(ValueError, match="strictly increasing"):
        stats.infer_bars_per_year(daily[::-1])


# --------------------------------------------------------------------------- PSR / DSR / MinTRL


# "The Sharpe Ratio Efficient Frontier" example as reproduced in R PerformanceAnalytics'
# documented examples: SR 2/sqrt(12) vs benchmark 1/sqrt(12) (monthly), skew -0.72,
# n = 59. PerformanceAnalytics ignores kurtosis by default (uses 3):
#   ProbSharpeRatio(refSR=1/12^0.5, sr=2/12^0.5, sk=-0.72, kr=5.78, n=59) -> 0.95974
#   MinTrackRecord(refSR=1/12^0.5, p=0.95, sr=2/12^0.5, sk=-0.72, kr=5.78) -> 52.37369
SR_EX, SR_BENCH = 2 / math.sqrt(12), 1 / math.sqrt(12)


def test_psr_matches_performanceanalytics_worked_example():
    psr = stats.probabilistic_sharpe_ratio(
        SR_EX, 59, skew=-0.72, kurtosis=3.0, sr_benchmark=SR_BENCH
    )
    assert psr == pytest.approx(0.95974, abs=5e-6)


def test_min_trl_matches_performanceanalytics_worked_example():
    trl = stats.min_track_record_length(SR_EX, skew=-0.72, kurtosis=3.0, sr_benchmark=SR_BENCH)
    assert trl == pytest.approx(52.37369, rel=1e-6)


def test_fat_tails_lower_psr_and_lengthen_min_trl():
    # with the paper's kurtosis 5.78 the variance term grows by (5.78 - 3)/4 SR^2
    psr = stats.probabilistic_sharpe_ratio(
        SR_EX, 59, skew=-0.72, kurtosis=5.78, sr_benchmark=SR_BENCH
    )
    trl = stats.min_track_record_length(SR_EX, skew=-0.72, kurtosis=5.78, sr_benchmark=SR_BENCH)
    var = 1 + 0.72 * SR_EX + 4.78 / 4 * SR_EX**2
    assert psr == pytest.approx(
        sps.norm.cdf((SR_EX - SR_BENCH) * math.sqrt(58) / math.sqrt(var)), rel=1e-12
    )
    assert psr < 0.95974
    assert trl == pytest.approx(59.895, abs=1e-3)


def test_min_trl_is_where_psr_reaches_the_confidence():
    n = stats.min_track_record_length(0.1, skew=-0.5, kurtosis=6.0, sr_benchmark=0.02)
    assert stats.probabilistic_sharpe_ratio(
        0.1, n, skew=-0.5, kurtosis=6.0, sr_benchmark=0.02
    ) == pytest.approx(0.95, abs=1e-9)
    assert stats.min_track_record_length(0.01, sr_benchmark=0.02) == math.inf


def test_dsr_matches_the_deflated_sharpe_ratio_paper_example():
    # Bailey & Lopez de Prado (2014), numerical example: N = 100 trials, variance of the
    # annualised trial SRs 1/2, T = 1250 daily returns, annualised SR 2.5, skew -3,
    # kurtosis 10 -> SR0 = 0.1132 per day (1.7894 annualised), DSR = 0.9004.
    sr0 = stats.expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    assert sr0 * math.sqrt(250) == pytest.approx(1.7894, abs=5e-5)
    dsr = stats.deflated_sharpe_ratio(
        2.5 / math.sqrt(250), 1250, n_trials=100, sr_variance=0.5 / 250, skew=-3.0, kurtosis=10.0
    )
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_of_ten_unit_variance_trials():
    # Bailey, Borwein, Lopez de Prado & Zhu (2014), Notices AMS: E[max_10] ~ 1.57
    assert stats.expected_max_sharpe(10, 1.0) == pytest.approx(1.575, abs=1e-3)
    assert stats.expected_max_sharpe(1, 1.0) == 0.0


def test_dsr_with_one_trial_is_psr_zero():
    kw = {"skew": -0.3, "kurtosis": 4.0}
    assert stats.deflated_sharpe_ratio(
        0.05, 500, n_trials=1, sr_variance=0.0, **kw
    ) == pytest.approx(stats.probabilistic_sharpe_ratio(0.05, 500, **kw))


def test_return_moments_use_non_excess_kurtosis():
    r = np.random.default_rng(1).normal(0.001, 0.01, 20000)
    sr, skew, kurt, n = stats.return_moments(r)
    assert n == 20000
    assert kurt == pytest.approx(3.0, abs=0.1)  # normal: 3, not 0
    assert skew == pytest.approx(0.0, abs=0.05)
    assert sr == pytest.approx(np.mean(r) / np.std(r, ddof=1))


# --------------------------------------------------------------------------- one pass


def test_pass_metrics_agrees_with_the_single_metrics():
    rng = np.random.default_rng(2)
    n = 300
    ts = pd.date_range("2017-01-02", periods=n, freq="h")
    pos = np.clip(rng.normal(0.2, 0.5, n), -1, 1)
    costs = 1e-5 * np.abs(np.diff(pos, prepend=0.0))
    r = pos * rng.normal(0, 1e-3, n) - costs
    m = stats.pass_metrics(r, pos, costs, timestamps=ts)
    bpy = stats.infer_bars_per_year(ts)
    assert m["bars_per_year"] == pytest.approx(bpy)
    assert m["sharpe"] == pytest.approx(stats.sharpe_ratio(r, bpy))
    assert m["max_drawdown"] == pytest.approx(stats.max_drawdown(r))
    assert m["turnover"] == pytest.approx(stats.turnover(pos))
    assert m["costs"] == pytest.approx(costs.sum())
    assert m["psr"] == pytest.approx(
        stats.probabilistic_sharpe_ratio(
            m["sharpe_per_bar"], n, skew=m["skew"], kurtosis=m["kurtosis"]
        )
    )
    assert m["dsr"] == pytest.approx(m["psr"])  # one trial
    assert m["annual_turnover"] == pytest.approx(m["turnover"] / (n / bpy))
    assert all(isinstance(v, float) for v in m.values())


def test_pass_metrics_dsr_deflates_with_more_trials():
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.01, 500)
    pos = np.ones(500)
    one = stats.pass_metrics(r, pos, np.zeros(500), bars_per_year=252)
    many = stats.pass_metrics(
        r, pos, np.zeros(500), bars_per_year=252, trial_sharpes=rng.normal(0, 0.05, 50)
    )
    assert many["dsr"] < one["dsr"]


def test_pass_metrics_rejects_bad_inputs():
    r = np.zeros(10)
    with pytest.raises(ValueError, match="positions must have shape"):
        stats.pass_metrics(r, np.zeros(9), np.zeros(10), bars_per_year=252)
    with pytest.raises(ValueError, match="timestamps"):
        stats.pass_metrics(r, np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="log_returns has a non-finite value at index 3"):
        stats.pass_metrics(
            np.array([0, 0, 0, np.nan, 0.0]), np.zeros(5), np.zeros(5), bars_per_year=252
        )
    with pytest.raises(ValueError, match=r"log_returns must be a 1-D array \[n_bars\]"):
        stats.pass_metrics(np.zeros((2, 5)), np.zeros(5), np.zeros(5), bars_per_year=252)


# --------------------------------------------------------------------------- across seeds


def test_iqm_by_hand():
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    # all runs and tasks pooled: 1, 2, 3, 4, 10, 20, 30, 40 -> mean of 3, 4, 10, 20
    scores = np.array([[1, 10], [2, 20], [3, 30], [4, 40]])
    assert stats.iqm(scores) == pytest.approx(9.25)
    assert stats.iqm([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5)  # robust to the outlier


def test_iqm_ci_is_stratified_by_task():
    # constant within each task: a stratified resample keeps 4 runs per task, so the IQM
    # never moves; an unstratified bootstrap over all 8 scores would.
    scores = np.array([[0.0, 1.0]] * 4)
    point, lo, hi = stats.iqm_ci(scores, n_boot=500, rng=0)
    assert point == lo == hi == pytest.approx(0.5)


def test_iqm_ci_brackets_the_estimate_and_is_seeded():
    scores = np.random.default_rng(4).normal(size=(10, 3))
    a = stats.iqm_ci(scores, n_boot=1000, rng=7)
    assert a[1] < a[0] < a[2]
    assert a == stats.iqm_ci(scores, n_boot=1000, rng=7)


def test_probability_of_improvement_by_hand():
    # pairs won by x: 1>0; 2>0, 2=2 (1/2), 2=2 (1/2); 3>0, 3>2, 3>2 -> 6 of 9
    assert stats.probability_of_improvement([1, 2, 3], [0, 2, 2]) == pytest.approx(6 / 9)
    assert stats.probability_of_improvement([1, 2, 3], [1, 2, 3]) == pytest.approx(0.5)
    assert stats.probability_of_improvement([5, 6], [1, 2]) == 1.0


def test_probability_of_improvement_is_mann_whitney_u_averaged_over_tasks():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0.3, 1, (6, 3)), rng.normal(0, 1, (8, 3))
    expected = np.mean([sps.mannwhitneyu(x[:, t], y[:, t]).statistic / (6 * 8) for t in range(3)])
    assert stats.probability_of_improvement(x, y) == pytest.approx(expected)


def test_probability_of_improvement_ci():
    rng = np.random.default_rng(6)
    x, y = rng.normal(1, 1, 10), rng.normal(0, 1, 10)
    p, lo, hi = stats.probability_of_improvement_ci(x, y, n_boot=500, rng=1)
    assert 0.0 <= lo <= p <= hi <= 1.0
    with pytest.raises(ValueError, match="same number of tasks"):
        stats.probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 3)))


def _fx_hours(start: str, end: str) -> pd.DatetimeIndex:
    """H1 bars of an FX week: Sunday 22:00 to Friday 21:00, no weekend bars."""
    idx = pd.date_range(start, end, freq="h")
    dow, hour = idx.day_of_week, idx.hour
    closed = ((dow == 4) & (hour >= 22)) | (dow == 5) | ((dow == 6) & (hour < 22))
    return idx[~closed]


def test_bars_per_year_of_a_seven_week_h1_split_comes_from_the_frequency():
    split = _fx_hours("2024-01-07 22:00", "2024-02-23 21:00")  # 7 trading weeks
    assert len(split) == 7 * 120
    assert stats.infer_bars_per_year(split) == pytest.approx(6200, rel=0.02)
    # the span of the split (6 weekends in 7 weeks) would say ~6,500; a split without a
    # weekend ~8,760: both measure the split, not the market's frequency
    span = (len(split) - 1) / ((split[-1] - split[0]).total_seconds() / stats.SECONDS_PER_YEAR)
    assert span > 6200 * 1.04
    week = split[(split >= "2024-01-08") & (split < "2024-01-13")]  # Monday to Friday
    assert stats.infer_bars_per_year(week) == pytest.approx(24 * 365.25, rel=0.01)  # < 1 week


@pytest.mark.parametrize(
    ("timestamps", "period"),
    [
        (pd.date_range("2024-01-01", periods=500, freq="h"), 24),
        (pd.date_range("2024-01-01", periods=500, freq="15min"), 96),
        (pd.bdate_range("2024-01-01", periods=300), 5),
        (pd.date_range("2024-01-01", periods=300, freq="D"), 7),
        (pd.date_range("2024-01-01", periods=100, freq="W"), 1),
    ],
)
def test_seasonal_period_from_the_bar_frequency(timestamps, period):
    assert stats.seasonal_period(timestamps) == period
