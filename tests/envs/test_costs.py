"""The cost model: a rebalance lands exactly on the target fraction of post-cost equity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from envs.config import EnvConfig
from envs.costs import BP, cost_rates, rebalance, transaction_cost


def _reference_trade(equity_pre: float, held: float, target: float, k: float, f: float) -> float:
    """Solve ``held + x = target * (equity_pre - k|x| - f|held + x|)`` by root finding."""

    def gap(x: float) -> float:
        return held + x - target * (equity_pre - k * abs(x) - f * abs(held + x))

    if gap(0.0) == 0.0:
        return 0.0
    span = 4 * (abs(target) + 1) * equity_pre + abs(held)
    return brentq(gap, -span, span, xtol=1e-15, rtol=1e-14)


@pytest.mark.parametrize("target", [-3.0, -1.0, -0.25, 0.0, 0.4, 1.0, 2.0])
@pytest.mark.parametrize("held", [-1.5, 0.0, 0.3, 1.0])
@pytest.mark.parametrize(("k", "f"), [(1e-4, 0.0), (25e-4, 3e-4), (0.0, 0.0)])
def test_rebalance_matches_root_finding(target: float, held: float, k: float, f: float) -> None:
    equity_pre = 1.3
    traded, cost = rebalance(equity_pre, held, target, k, f)
    assert traded == pytest.approx(_reference_trade(equity_pre, held, target, k, f), abs=1e-12)
    assert cost == pytest.approx(k * abs(traded) + f * abs(held + traded), abs=1e-15)
    # the position lands on the target fraction of the equity left after costs
    assert held + traded == pytest.approx(target * (equity_pre - cost), abs=1e-12)


def test_full_investment_leaves_no_cash_and_no_drift_trades() -> None:
    k = 1e-4
    traded, cost = rebalance(1.0, 0.0, 1.0, k, 0.0)
    assert cost == pytest.approx(k / (1 + k))
    assert 1.0 - traded - cost == pytest.approx(0.0, abs=1e-16)  # cash
    # next bar, fully invested at a new price: nothing (but rounding) to trade
    traded2, cost2 = rebalance(1.07, 1.07, 1.0, k, 0.0)
    assert abs(traded2) < 1e-15 and cost2 < 1e-18


def test_flat_target_closes_exactly() -> None:
    traded, cost = rebalance(2.0, -0.7, 0.0, 3e-4, 1e-4)
    assert traded == 0.7 and cost == pytest.approx(0.7 * 3e-4)


def test_rates_from_config() -> None:
    cfg = EnvConfig(commission_bps=1, half_spread_bps=2, slippage_bps=3, financing_bps_per_bar=0.5)
    assert cost_rates(cfg) == pytest.approx((6 * BP, 0.5 * BP))
    assert transaction_cost(-2.0, 3.0, 6 * BP, 0.5 * BP) == pytest.approx(12 * BP + 1.5 * BP)


def test_reference_check_is_sensitive() -> None:
    """A cost model that ignores costs in the target does not match the root finder."""
    naive = 1.0 * 1.0 - 0.0  # target * equity_pre - held
    assert not np.isclose(naive, _reference_trade(1.0, 0.0, 1.0, 1e-2, 0.0), atol=1e-12)
