"""The README's cheap commands work when copy-pasted (a new user's first minutes)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.demo import CONFIGS, SMOKE

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


def quickstart_lines() -> list[str]:
    """Every shell line of the README's quickstart, in order, comments stripped."""
    text = README.read_text()
    quickstart = text[text.index("## Quickstart") : text.index("## Documentation")]
    blocks = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("source ")]


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom_in_a_shell(tmp_path: Path) -> None:
    """A new user's copy-paste of the whole quickstart (train budgets shrunk to smoke size)."""
    smoke = " ".join(f"--set {shlex.quote(o)}" for o in SMOKE)
    script = ["set -euo pipefail"]
    for line in quickstart_lines():
        if line.startswith("mlkv-trader demo"):
            continue  # covered by test_cheap_readme_command_runs
        script.append(f"{line} {smoke}" if line.startswith("mlkv-trader train") else line)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "configs").symlink_to(CONFIGS)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = next((tmp_path / "runs" / "ar1_ppo").glob("sweep-*"))
    for out in (sweep, tmp_path / "runs" / "ar1_ppo"):
        assert (out / "backtest.json").is_file() and (out / "report.html").is_file()
    assert "P(" in done.stdout and "comparison(s) made" in done.stdout
