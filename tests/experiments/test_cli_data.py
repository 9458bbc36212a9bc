"""`mlkv-trader data validate/info`: exit codes and what they print."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main


def test_validate_clean_embedded(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "eurusd_h1"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "6,225" in out and "gaps > 3x" in out


def test_validate_broken_file_lists_each_defect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "Time,Open,High,Low,Close,Volume\n"
        "2020-01-01 00:00,1.0,1.2,0.9,1.1,100\n"
        "2020-01-01 01:00,1.1,1.0,1.0,1.2,110\n"
        "2020-01-01 01:00,1.1,1.3,1.0,1.2,110\n"
        "2020-01-01 03:00,1.1,1.3,1.0,x,110\n"
    )
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 kind(s) of defect" in out
    assert "line 3, column 'High'" in out
    assert "line 4, column 'Time'" in out
    assert "line 5, column 'Close'" in out


def test_info_prints_return_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "googl_d1"]) == 0
    assert "lag-1 autocorr" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "validate", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out
