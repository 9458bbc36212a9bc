"""Loading and validation: every defect kind names the right row and column."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import CandleDataError, find_defects, load_candles

HEADER = "Time,Open,High,Low,Close,Volume"
GOOD = [
    "2020-01-01 00:00:00,1.0,1.2,0.9,1.1,100",
    "2020-01-01 01:00:00,1.1,1.3,1.0,1.2,110",
    "2020-01-01 02:00:00,1.2,1.25,1.1,1.15,90",
    "2020-01-01 03:00:00,1.15,1.2,1.1,1.18,95",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "c.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def with_row(i: int, row: str) -> list[str]:
    rows = list(GOOD)
    rows[i] = row
    return rows


def test_clean_file_loads_with_canonical_schema(tmp_path: Path) -> None:
    df = load_candles(write(tmp_path, GOOD))
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert df.index.name == "time" and isinstance(df.index, pd.DatetimeIndex)
    assert str(df.index.tz) == "UTC"
    assert (df.dtypes == np.float64).all()
    assert df["close"].tolist() == [1.1, 1.2, 1.15, 1.18]


# (row index in GOOD that gets replaced, the bad row, expected column, expected words)
DEFECTS = [
    (1, "2020-01-01 01:00:00,1.1,1.3,1.0,abc,110", "Close", "not a number"),
    (2, "2020-01-01 02:00:00,1.2,1.25,,1.15,90", "Low", "empty"),
    (2, "2020-01-01 02:00:00,1.2,inf,1.1,1.15,90", "High", "inf"),
    (3, "2020-01-01 03:00:00,-1.15,1.2,-1.2,1.18,95", "Open", "not positive"),
    (1, "2020-01-01 01:00:00,1.1,1.3,1.0,1.2,-5", "Volume", "volume -5 < 0"),
    (1, "2020-01-01 01:00:00,1.1,1.15,1.0,1.2,110", "High", "high 1.15 is below close 1.2"),
    (2, "2020-01-01 02:00:00,1.2,1.25,1.16,1.15,90", "Low", "low 1.16 is above close 1.15"),
    (2, "2020-01-01 01:00:00,1.2,1.25,1.1,1.15,90", "Time", "appears more than once"),
    (3, "2020-01-01 00:30:00,1.15,1.2,1.1,1.18,95", "Time", "earlier than"),
    (2, "not-a-time,1.2,1.25,1.1,1.15,90", "Time", "cannot parse time"),
]


@pytest.mark.parametrize(("i", "row", "column", "words"), DEFECTS)
def test_each_defect_names_line_and_column(
    tmp_path: Path, i: int, row: str, column: str, words: str
) -> None:
    path = write(tmp_path, with_row(i, row))
    with pytest.raises(CandleDataError) as info:
        load_candles(path)
    err = info.value
    assert err.row == i + 2  # 1-based line in the file; the header is line 1
    assert err.column == column
    assert words in str(err)
    assert f"c.csv line {i + 2}, column '{column}'" in str(err)
    assert "drop_invalid=True" in str(err) or "time_format" in str(err)


@pytest.mark.parametrize(("i", "row", "column", "words"), DEFECTS)
def test_drop_invalid_drops_only_the_bad_row_and_warns(
    tmp_path: Path, i: int, row: str, column: str, words: str
) -> None:
    path = write(tmp_path, with_row(i, row))
    with pytest.warns(UserWarning, match="dropped 1 invalid rows of 4"):
        df = load_candles(path, drop_invalid=True)
    assert len(df) == 3
    assert df.index.is_monotonic_increasing and df.index.is_unique


def test_frame_defect_names_row_of_frame() -> None:
    df = load_candles(pd.DataFrame([r.split(",") for r in GOOD], columns=HEADER.split(",")))
    bad = df.reset_index()
    bad.loc[2, "high"] = 0.5
    with pytest.raises(CandleDataError, match=r"<DataFrame> row 3, column 'high'") as info:
        load_candles(bad)
    assert info.value.row == 3


def test_missing_column_says_how_to_fix(tmp_path: Path) -> None:
    path = write(tmp_path, [r.rsplit(",", 1)[0] for r in GOOD], header="Time,Open,High,Low,Close")
    with pytest.raises(CandleDataError, match=r"missing column 'volume'.*rename") as info:
        load_candles(path)
    assert info.value.column == "volume" and info.value.row is None


def test_empty_file_and_frame(tmp_path: Path) -> None:
    with pytest.raises(CandleDataError, match="no data rows"):
        load_candles(write(tmp_path, []))
    with pytest.raises(CandleDataError, match="cannot be read"):
        (tmp_path / "e.csv").write_text("")
        load_candles(tmp_path / "e.csv")
    with pytest.raises(CandleDataError, match="no data rows"):
        load_candles(pd.DataFrame(columns=["time", "open", "high", "low", "close", "volume"]))


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(CandleDataError, match="no such file"):
        load_candles(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "header",
    [
        "Date,OPEN,High,Low,Close,Vol",
        "datetime,open,high,low,close,tick_volume",
        "Timestamp,Open,High,Low,Close,Tick Volume",
        "Gmt time,Open,High,Low,Close,Volume",
    ],
)
def test_column_aliases_case_insensitive(tmp_path: Path, header: str) -> None:
    df = load_candles(write(tmp_path, GOOD, header=header))
    assert len(df) == 4 and list(df.columns) == ["open", "high", "low", "close", "volume"]


def test_extra_columns_are_ignored_and_explicit_time_column(tmp_path: Path) -> None:
    rows = [f"{r},x" for r in GOOD]
    df = load_candles(
        write(tmp_path, rows, header=HEADER.replace("Time", "When") + ",Note"), time_column="When"
    )
    assert len(df) == 4


def test_time_format_and_timezone(tmp_path: Path) -> None:
    rows = [
        "01.01.2017 22:00:00.000,1.05,1.06,1.04,1.05,1",
        "01.01.2017 23:00:00.000,1.05,1.06,1.04,1.05,1",
    ]
    df = load_candles(write(tmp_path, rows), time_format="%d.%m.%Y %H:%M:%S.%f", tz="Europe/Berlin")
    assert df.index[0] == pd.Timestamp("2017-01-01 22:00", tz="Europe/Berlin")
    df = load_candles(write(tmp_path, rows))  # inferred format, day first
    assert df.index[1] == pd.Timestamp("2017-01-01 23:00", tz="UTC")


def test_round_trip_csv_gz_and_parquet(tmp_path: Path) -> None:
    df = load_candles(write(tmp_path, GOOD))
    gz = tmp_path / "c.csv.gz"
    with gzip.open(gz, "wt") as f:
        df.to_csv(f)
    pd.testing.assert_frame_equal(load_candles(gz), df, check_freq=False)
    pytest.importorskip("pyarrow")
    pq = tmp_path / "c.parquet"
    df.to_parquet(pq)
    pd.testing.assert_frame_equal(load_candles(pq), df, check_freq=False)
    pd.testing.assert_frame_equal(load_candles(df), df, check_freq=False)


def test_find_defects_lists_every_kind(tmp_path: Path) -> None:
    rows = list(GOOD)
    rows[1] = "2020-01-01 01:00:00,1.1,1.15,1.0,1.2,110"  # high below close
    rows[3] = "2020-01-01 03:00:00,1.15,1.2,1.1,1.18,-1"  # negative volume
    errors = find_defects(write(tmp_path, rows))
    assert [(e.row, e.column) for e in errors] == [(3, "High"), (5, "Volume")]
    assert find_defects(write(tmp_path, GOOD)) == []


def test_parsed_numeric_columns_equal_the_text_path(tmp_path: Path) -> None:
    """A clean file's columns come from pandas' number parser; the values must be exactly
    what parsing the same text entry by entry gives (a DataFrame of strings takes that path)."""
    rng = np.random.default_rng(0)
    n = 2000
    close = 1.0 + np.cumsum(rng.normal(0, 1e-3, n))
    rows = [
        f"{pd.Timestamp('2020-01-01') + pd.Timedelta(hours=i)},{float(o)!r},"
        f"{max(o, c) + 1e-4:.17g},{min(o, c) - 3e-5:.9f},{float(c)!r},{int(v)}"
        for i, (o, c, v) in enumerate(
            zip(np.r_[1.0, close[:-1]], close, rng.integers(1, 1000, n), strict=True)
        )
    ]
    parsed = load_candles(write(tmp_path, rows))
    text = pd.read_csv(tmp_path / "c.csv", dtype=str, keep_default_na=False)
    assert not any(pd.api.types.is_numeric_dtype(d) for d in text.dtypes)  # all text
    from_text = load_candles(text)
    np.testing.assert_array_equal(parsed.to_numpy(), from_text.to_numpy())
    assert parsed.index.equals(from_text.index)


@pytest.mark.parametrize("bad, shown", [("inf", "'inf'"), ("-inf", "'-inf'")])
def test_non_finite_number_in_a_parsed_column_names_row_and_column(
    tmp_path: Path, bad: str, shown: str
) -> None:
    rows = with_row(2, f"2020-01-01 02:00:00,1.2,1.25,1.1,{bad},90")
    with pytest.raises(CandleDataError) as info:
        load_candles(write(tmp_path, rows))
    assert info.value.row == 4 and info.value.column == "Close"
    assert f"close is {shown}" in str(info.value)
