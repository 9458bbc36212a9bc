"""The README's cheap commands work when copy-pasted (a new user's first minutes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from experiments.cli import main

README = Path(__file__).parents[2] / "README.md"
CHEAP = ("--help", "data validate", "data info", "demo --smoke")


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("mlkv-trader")]


def test_readme_has_the_three_jobs() -> None:
    commands = " ".join(readme_commands())
    for job in ("train --config", "backtest", "report", "demo"):
        assert job in commands
    assert "make demo" in README.read_text() and "make test" in README.read_text()


@pytest.mark.parametrize("line", [c for c in readme_commands() if any(k in c for k in CHEAP)])
def test_cheap_readme_command_runs(line: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the demo writes runs/ here
    argv = shlex.split(line)[1:]
    if argv[0] == "demo":
        argv += ["--no-progress", "--seeds", "1"]
    try:
        code = main(argv)
    except SystemExit as exit_:  # --help
        code = exit_.code
    assert code == 0, line
