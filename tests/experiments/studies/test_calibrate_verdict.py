"""The calibration script runs end to end and rewrites only its block of the doc."""

from __future__ import annotations

import numpy as np

from experiments.studies import calibrate_verdict as cal


def test_calibration_runs_and_checks_requirements(capsys):
    assert cal.main(["--trials", "2", "--no-write", "--only", "rw-flat", "ar-random"]) == 0
    out = capsys.readouterr().out
    assert "| rw-flat |" in out and "naive t-test" in out


def test_momentum_rule_has_no_look_ahead():
    m = np.random.default_rng(0).normal(size=50)
    before = cal.momentum_means(m, [3], 1.0)[0]
    m2 = m.copy()
    m2[30:] = -m2[30:]  # change the future from bar 30 on
    after = cal.momentum_means(m2, [3], 1.0)[0]
    np.testing.assert_array_equal(before[:31], after[:31])  # bar 30 uses returns < 30 only
    assert not np.array_equal(before, after)


def test_write_doc_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "evaluator.md"
    doc.write_text(f"# Title\n\nprose before\n\n{cal.BEGIN}\nold table\n{cal.END}\n\nprose after\n")
    cal.write_doc("new table", doc)
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert text.startswith("# Title\n\nprose before") and text.endswith("prose after\n")
    fresh = tmp_path / "fresh.md"
    cal.write_doc("t", fresh)
    assert "## Calibration table" in fresh.read_text()
