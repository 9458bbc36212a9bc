"""Configuration of the market-replay environment: one frozen dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

MODES = ("train", "test")
ACTIONS = ("continuous", "discrete")


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines a market-replay episode except the candles themselves.

    Costs are in basis points (1 bp = 1e-4) of traded notional, except financing, which is
    in bp of held notional per bar. Defaults describe a liquid FX pair at retail prices:
    0.3 bp commission + 0.5 bp half-spread + 0.2 bp slippage = 1 bp per unit traded.

    Build it from a YAML mapping with :meth:`from_dict`; :meth:`to_dict` gives the mapping
    back (what a run directory stores).

    Raises:
        ValueError: on any invalid field, naming the field and its allowed range.
    """

    window: int = 128  # T: bars per observation (the last one is the decision bar)
    episode_length: int = 512  # steps per episode in train mode (test walks the whole split)
    mode: str = "train"  # "train": random starts, fixed length; "test": one walk over all bars
    action: str = "continuous"  # "continuous": Box(-1, 1, (1,)); "discrete": {short, flat, long}
    commission_bps: float = 0.3  # commission, bp of traded notional
    half_spread_bps: float = 0.5  # half the bid-ask spread, bp of traded notional
    slippage_bps: float = 0.2  # slippage beyond the spread, bp of traded notional
    financing_bps_per_bar: float = 0.0  # borrow/financing, bp of held notional per bar held
    initial_equity: float = 1.0  # equity at the start of every episode (currency units)
    max_position: float = 1.0  # |position| at action +-1, as a fraction of equity (leverage cap)
    record_ledger: bool = True  # keep the per-bar ledger (8 * 6 bytes per env per step)

    def __post_init__(self) -> None:
        _check_int("window", self.window, 1)
        _check_int("episode_length", self.episode_length, 1)
        _check_choice("mode", self.mode, MODES)
        _check_choice("action", self.action, ACTIONS)
        for name in ("commission_bps", "half_spread_bps", "slippage_bps", "financing_bps_per_bar"):
            _check_real(name, getattr(self, name), low=0.0)
        _check_real("initial_equity", self.initial_equity, low=0.0, strict=True)
        _check_real("max_position", self.max_position, low=0.0, strict=True)
        if not isinstance(self.record_ledger, bool):
            raise ValueError(f"record_ledger must be True or False, got {self.record_ledger!r}.")
        worst = 2.0 * self.max_position * (self.trade_cost_bps + self.financing_bps_per_bar)
        if worst >= 1e4:
            raise ValueError(
                f"costs too high for max_position={self.max_position}: a full reversal would cost "
                f"{worst:g} bp of equity (>= 100%). Lower commission_bps + half_spread_bps + "
                "slippage_bps (+ financing_bps_per_bar) or max_position."
            )

    @property
    def trade_cost_bps(self) -> float:
        """Cost of trading one unit of notional: commission + half-spread + slippage, in bp."""
        return float(self.commission_bps + self.half_spread_bps + self.slippage_bps)

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain mapping (YAML/JSON friendly); ``from_dict`` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any] | None) -> EnvConfig:
        """Build a config from a mapping, e.g. the ``env:`` section of a YAML file.

        Missing keys keep their defaults.

        Raises:
            ValueError: a key that is not a field (named, with the allowed keys), or a bad value.
        """
        mapping = dict(mapping or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in mapping if key not in fields]
        if unknown:
            raise ValueError(
                f"unknown EnvConfig key(s) {', '.join(map(repr, unknown))}; "
                f"allowed keys: {', '.join(fields)}."
            )
        return cls(**mapping)

    def replace(self, **changes: Any) -> EnvConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _check_real(name: str, value: Any, *, low: float, strict: bool = False) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
