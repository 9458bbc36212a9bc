"""`mlkv-trader compare` and the backtest request: typed, validated, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.backtesting import BacktestRequest
from experiments.cli import main


def test_compare_prints_iqm_and_probability_of_improvement(tmp_path, capsys) -> None:
    for name, shift in (("a", 0.5), ("b", 0.0)):
        doc = {"format": "mlkv-trader-backtest",
               "pass_totals": {"policy": [[shift + i * 0.01, shift] for i in range(4)]}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "P(A > B) = 1.000" in out and "IQM" in out
    (tmp_path / "c.json").write_text("{}")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2
    assert "not an mlkv-trader backtest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"runs": ()}, "no finished runs"), ({"passes": 1}, "--passes must be >= 2"),
     ({"split": "train"}, "--split must be one of")],
)
def test_bad_request_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BacktestRequest(**{"runs": (Path("r"),), **kwargs})
