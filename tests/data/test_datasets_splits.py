"""Embedded datasets and chronological splits."""

from __future__ import annotations

import pandas as pd
import pytest

from data import chronological_split, datasets, find_defects, synthetic


@pytest.mark.parametrize(("name", "bars"), [("eurusd_h1", 6225), ("googl_d1", 2335)])
def test_embedded_dataset_loads_clean(name: str, bars: int) -> None:
    df = datasets.load(name)
    assert len(df) == bars
    assert name in datasets.available()
    assert find_defects(datasets.path(name), time_format=datasets.time_format(name)) == []


def test_eurusd_first_and_last_bar() -> None:
    df = datasets.load("eurusd_h1")
    assert df.index[0] == pd.Timestamp("2017-01-01 22:00", tz="UTC")
    assert df.index[-1] == pd.Timestamp("2017-12-29 21:00", tz="UTC")
    assert df["open"].iloc[0] == 1.05236


def test_unknown_dataset_lists_available() -> None:
    with pytest.raises(ValueError, match="eurusd_h1"):
        datasets.load("btc")


def test_split_is_ordered_with_embargo() -> None:
    candles = synthetic.gbm(2000, seed=0)
    train, val, test = chronological_split(candles, (0.6, 0.2, 0.2), embargo=50)
    assert len(train) + len(val) + len(test) == 2000 - 100
    assert train.index[-1] < val.index[0] and val.index[-1] < test.index[0]
    pos = candles.index.get_indexer
    assert pos([val.index[0]])[0] - pos([train.index[-1]])[0] == 51  # 50 bars dropped
    assert pos([test.index[0]])[0] - pos([val.index[-1]])[0] == 51
    assert test.index[-1] == candles.index[-1]
    assert abs(len(train) - 0.6 * 1900) <= 1


def test_split_too_short_is_clear() -> None:
    with pytest.raises(ValueError, match=r"parts of .* each needs >= 64"):
        chronological_split(synthetic.gbm(300, seed=0), embargo=100)
    with pytest.raises(ValueError, match="summing to 1"):
        chronological_split(synthetic.gbm(300, seed=0), (0.5, 0.5, 0.5))


def test_split_rejects_unsorted() -> None:
    candles = synthetic.gbm(1000, seed=0)
    with pytest.raises(ValueError, match="sorted"):
        chronological_split(candles.iloc[::-1])
