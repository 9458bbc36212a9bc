"""User errors end the CLI with exit status 2 and one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main
from experiments.demo import CONFIGS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backtest", "no/such/run"], "no/such/run: not a run directory (no config.yaml)"),
        (["train", "--config", "nope.yaml"], "--config: no such file: nope.yaml"),
        (["train", "--config", str(CONFIGS / "ar1_ppo.yaml"), "--set", "env.windw=3"],
         "env.windw: unknown key"),
        (["report", "missing.json"], "missing.json: no such backtest file"),
        (["backtest", "no/such/run", "--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_user_error_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path,
                                           monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLKV_TRADER_TRACEBACK", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlkv-trader {argv[0]}: error: ") and message in err
    assert "Traceback" not in err


def test_traceback_on_request(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLKV_TRADER_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        main(["backtest", "no/such/run"])
