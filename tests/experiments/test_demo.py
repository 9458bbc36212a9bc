"""`mlkv-trader demo --smoke`: the whole loop runs and writes a complete report."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.report import SECTIONS
from experiments.cli import main


def test_demo_smoke_writes_report_and_json(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--smoke", "--market", "ar1", "--seeds", "2", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "report:" in out
    batch = tmp_path / "ar1" / "ar1_ppo"
    doc = json.loads((batch / "backtest.json").read_text())
    assert len(doc["policies"]) == 2
    assert doc["verdict"]["label"] in {"LEARNED", "CONSISTENT-BUT-NO-EDGE", "RANDOM",
                                       "INCONCLUSIVE"}
    html = (batch / "report.html").read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in html
    assert html.count("data:image/png;base64,") == 4  # images are embedded
    assert "src='http" not in html  # self-contained
    # `report` regenerates the same document from the JSON
    (batch / "report.html").unlink()
    assert main(["report", str(batch / "backtest.json")]) == 0
    assert (batch / "report.html").read_text().count("<h2") == len(SECTIONS)
