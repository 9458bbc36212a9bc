"""Candle data: loading and validation, chronological splits, embedded and synthetic markets.

No torch here: ``data`` is the bottom of the dependency graph.
"""

from data import datasets, synthetic
from data.loading import CANDLE_COLUMNS, CandleDataError, find_defects, load_candles
from data.splits import DEFAULT_EMBARGO, Split, chronological_split

__all__ = [
    "CANDLE_COLUMNS",
    "DEFAULT_EMBARGO",
    "CandleDataError",
    "Split",
    "chronological_split",
    "datasets",
    "find_defects",
    "load_candles",
    "synthetic",
]
