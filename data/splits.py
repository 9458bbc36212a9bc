"""Chronological train / validation / test splits with an embargo gap (never shuffled)."""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

#: Default embargo in bars: the default observation window, so that no observation of a
#: later part contains a bar of an earlier one (and no reward of an earlier part is computed
#: from a bar of a later one).
DEFAULT_EMBARGO = 128


class Split(NamedTuple):
    """Three consecutive, non-overlapping parts of a candle frame, in time order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def chronological_split(
    candles: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    *,
    embargo: int = DEFAULT_EMBARGO,
    min_bars: int = 64,
) -> Split:
    """Split candles in time order, dropping ``embargo`` bars between consecutive parts.

    The fractions apply to the bars left after removing the two embargo gaps.

    Args:
        candles: frame with an ascending ``DatetimeIndex`` (as from ``load_candles``).
        fractions: shares of (train, validation, test); each >= 0, summing to 1. A zero
            share gives an empty part (e.g. ``(0.8, 0.0, 0.2)`` for no validation).
        embargo: bars dropped between train/validation and validation/test; at least the
            observation window so no later observation contains an earlier part's bar.
        min_bars: smallest allowed length of every non-empty part.

    Returns:
        ``Split(train, validation, test)``.

    Raises:
        ValueError: bad fractions or embargo, unsorted index, or a part shorter than
            ``min_bars`` (the message says how many bars each part would get).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"fractions must be three non-negative shares summing to 1, got {fractions}."
        )
    if embargo < 0 or int(embargo) != embargo:
        raise ValueError(f"embargo must be a non-negative integer number of bars, got {embargo}.")
    if not candles.index.is_monotonic_increasing:
        raise ValueError("candles must be sorted by time; load them with data.load_candles.")
    usable = len(candles) - 2 * embargo
    n_train = round(fractions[0] * usable)
    n_val = round(fractions[1] * usable)
    sizes = (n_train, n_val, max(usable - n_train - n_val, 0))
    if usable <= 0 or any(
        0 < s < min_bars or (s == 0 and f > 0) for s, f in zip(sizes, fractions, strict=False)
    ):
        raise ValueError(
            f"split of {len(candles)} bars with embargo={embargo} gives parts of {sizes} bars "
            f"(train, validation, test); each needs >= {min_bars}. Use more data, a smaller "
            "embargo, other fractions, or a smaller min_bars."
        )
    a = n_train
    b = a + embargo + n_val
    c = b + embargo
    return Split(candles.iloc[:a], candles.iloc[a + embargo : b], candles.iloc[c:])
