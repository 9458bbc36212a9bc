"""Embedded real candle datasets (from gym-anytrading 2.0.0, MIT; license file beside them)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from data.loading import load_candles

#: name -> (file, strftime format of its time column, one-line description)
_DATASETS: dict[str, tuple[str, str, str]] = {
    "eurusd_h1": (
        "eurusd_h1_2017_ask.csv.gz",
        "%d.%m.%Y %H:%M:%S.%f",
        "EURUSD 1-hour ask candles, 2017-01-01 22:00 .. 2017-12-29 21:00 UTC (6,225 bars)",
    ),
    "googl_d1": (
        "googl_d1_2009_2018.csv.gz",
        "%Y-%m-%d",
        "GOOGL daily candles, 2009-05-22 .. 2018-08-29 (2,335 bars)",
    ),
}


def available() -> dict[str, str]:
    """Names of the embedded datasets with a one-line description of each."""
    return {name: desc for name, (_, _, desc) in _DATASETS.items()}


def path(name: str) -> Path:
    """Path of an embedded dataset's file."""
    _check(name)
    return Path(str(resources.files(__name__).joinpath(_DATASETS[name][0])))


def time_format(name: str) -> str:
    """``strftime`` format of an embedded dataset's time column."""
    _check(name)
    return _DATASETS[name][1]


def load(name: str) -> pd.DataFrame:
    """Load an embedded dataset by name (see :func:`available`) as validated candles."""
    _check(name)
    return load_candles(path(name), time_format=time_format(name))


def _check(name: str) -> None:
    if name not in _DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; available: {', '.join(_DATASETS)}.")
