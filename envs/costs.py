"""The cost model, in one place: what a rebalance trades and what it costs.

Every front door (``MarketReplayEnv``, ``MarketReplayVecEnv``, the backtester through them)
trades through :func:`rebalance`, called by the one step kernel in :mod:`envs.kernels`.

Model (all amounts in currency, prices per unit):

* trading one unit of notional costs ``trade_rate = (commission + half_spread + slippage)
  bps * 1e-4``, charged on the absolute traded notional ``|x|``;
* holding a position for a bar costs ``financing_rate = financing bps * 1e-4`` of the held
  notional ``|N|`` (charged at the bar's open, after the trade; 0 by default);
* the target is a fraction of equity *after* costs: the trade ``x`` solves
  ``N_old + x = target * (E_pre - trade_rate |x| - financing_rate |N_old + x|)``
  exactly, so a position of 1.0 stays fully invested with zero cash and buy-and-hold ends at
  ``price ratio / (1 + trade_rate)`` (minus financing).

Solving for ``x``: with ``E_after = E_pre - cost`` and ``N_new = target * E_after``,
``|N_new| = |target| E_after``, hence ``E_after = (E_pre - k|x|) / g`` with
``g = 1 + f |target|``, and ``g x + target k |x| = target E_pre - g N_old =: d``.
The sign of ``x`` is the sign of ``d`` (as long as ``|target| k < 1``, which
:class:`~envs.config.EnvConfig` guarantees), giving ``x = d / (g + sign(d) target k)``.
"""

from __future__ import annotations

import math

import numba as nb

from envs.config import EnvConfig

#: One basis point as a fraction.
BP = 1e-4


def cost_rates(config: EnvConfig) -> tuple[float, float]:
    """``(trade_rate, financing_rate)`` as fractions: cost per unit traded / held per bar."""
    return config.trade_cost_bps * BP, float(config.financing_bps_per_bar) * BP


@nb.njit(cache=True, error_model="numpy")
def transaction_cost(traded: float, held: float, trade_rate: float, financing_rate: float) -> float:
    """Cost of one step: ``trade_rate * |traded| + financing_rate * |held|`` (currency).

    Args:
        traded: signed notional traded at the open (currency).
        held: signed notional held after the trade (currency).
        trade_rate: cost per unit of traded notional (fraction).
        financing_rate: cost per unit of held notional per bar (fraction).
    """
    return trade_rate * abs(traded) + financing_rate * abs(held)


@nb.njit(cache=True, error_model="numpy")
def rebalance(
    equity_pre: float, held: float, target: float, trade_rate: float, financing_rate: float
) -> tuple[float, float]:
    """Trade that moves a position to ``target`` times the post-cost equity, and its cost.

    Args:
        equity_pre: equity marked at the fill price, before the trade (currency, > 0).
        held: signed notional held before the trade, marked at the fill price (currency).
        target: wanted position as a signed fraction of the equity after costs.
        trade_rate: cost per unit of traded notional (fraction).
        financing_rate: cost per unit of held notional per bar (fraction).

    Returns:
        ``(traded, cost)``: signed notional bought (+) or sold (-), and the cost paid
        (trading + one bar of financing), so that ``held + traded == target *
        (equity_pre - cost)`` up to rounding.
    """
    g = 1.0 + financing_rate * abs(target)
    d = target * equity_pre - g * held
    # x = d / (g + target k) when buying, d / (g - target k) when selling; without a branch
    # (a random policy makes it unpredictable), and 0 when d == 0
    traded = d / (g + math.copysign(1.0, d) * target * trade_rate)
    return traded, transaction_cost(traded, held + traded, trade_rate, financing_rate)


__all__ = ["BP", "cost_rates", "rebalance", "transaction_cost"]
