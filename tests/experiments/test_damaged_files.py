"""Damaged files (truncated, corrupted, read-only, full disk) give one clear line and exit
status 2, and nothing is overwritten; concurrent runs never share a directory."""

from __future__ import annotations

import errno
import hashlib
import json
import threading
from datetime import datetime
from pathlib import Path

import pytest

from experiments import runs
from experiments.checkpoint import save_checkpoint, write_atomic
from experiments.cli import main
from experiments.config import config_to_yaml, load_config
from experiments.errors import RunBusyError, WriteError
from experiments.runs import ProgressLog, new_run_dir, read_progress_rows, run_lock

TINY = ["name=tiny", "n_envs=2", "total_steps=256", "data.source=synthetic:ar1",
        "data.n_bars=1200", "data.embargo=16", "env.window=16", "env.episode_length=48",
        "model.d_model=16", "model.window=4", "model.account_hidden=8", "model.net_arch=[16]",
        "model.plan={kind: mlkv, n_layers: 3, n_heads: 2, n_kv_heads: 1, n_kv_layers: 3}",
        "ppo.n_steps=64", "ppo.batch_size=32", "ppo.n_epochs=2"]
PROGRESS = ("time/total_timesteps,train/loss\n128,0.5\n256,0.25\n")
BACKTEST = {"format": "mlkv-trader-backtest", "pass_totals": {"policy": [[0.1, 0.2]]}}


def make_run(root: Path) -> Path:
    """A run directory as training leaves it (the checkpoint holds no real model: every
    damage below is found before a model would be built from it)."""
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_to_yaml(load_config(None, TINY)))
    (run / "progress.csv").write_text(PROGRESS)
    for name in ("checkpoints/ckpt-000000128.zip", "best.zip"):
        save_checkpoint(run / name, {"state": {"num_timesteps": 128}}, {"kind": "training"})
    (run / "backtest.json").write_text(json.dumps(BACKTEST))
    (run / "report.html").write_text("<html>the report of the last backtest</html>")
    return run


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


DAMAGE = {
    "backtest.json truncated": ("backtest.json", truncate, ["report", "{run}/backtest.json"],
                                "not valid JSON"),
    "backtest.json damaged inside": (
        "backtest.json", lambda p: p.write_text('{"format": "mlkv-trader-backtest"}'),
        ["report", "{run}/backtest.json"], "damaged backtest.json"),
    "backtest.json truncated (compare)": (
        "backtest.json", truncate, ["compare", "{run}/backtest.json", "{run}/backtest.json"],
        "not valid JSON"),
    "backtest.json damaged inside (compare)": (
        "backtest.json", lambda p: p.write_text('{"format": "mlkv-trader-backtest"}'),
        ["compare", "{run}/backtest.json", "{run}/backtest.json"], "damaged backtest.json"),
    "config.yaml cut in half (resume)": ("config.yaml", truncate, ["train", "--resume", "{run}"],
                                         "config.yaml"),
    "config.yaml cut in its last line (resume)": (
        "config.yaml", lambda p: truncate(p, 0.995), ["train", "--resume", "{run}"],
        "truncated"),
    "config.yaml cut in half (backtest)": ("config.yaml", truncate, ["backtest", "{run}"],
                                           "config.yaml"),
    "config.yaml cut after a section (backtest)": (
        "config.yaml", lambda p: p.write_text(p.read_text().split("\nenv:")[0] + "\n"),
        ["backtest", "{run}"], "missing key(s) env"),
    "progress.csv garbage (resume)": (
        "progress.csv", lambda p: p.write_bytes(b"\x00\xff\xfe garbage"),
        ["train", "--resume", "{run}"], "progress.csv: not a text file"),
    "progress.csv rows of the wrong width (resume)": (
        "progress.csv", lambda p: p.write_text(PROGRESS + "384,0.1,7\n512,0.1\n"),
        ["train", "--resume", "{run}"], "progress.csv line 4: 3 fields"),
    "progress.csv without its header (resume)": (
        "progress.csv", lambda p: p.write_text("\n".join(PROGRESS.splitlines()[1:]) + "\n"),
        ["train", "--resume", "{run}"], "no time/total_timesteps column"),
    "checkpoint truncated (resume)": (
        "checkpoints/ckpt-000000128.zip", truncate, ["train", "--resume", "{run}"],
        "corrupted checkpoint"),
    "checkpoint with a flipped byte (resume)": (
        "checkpoints/ckpt-000000128.zip", flip, ["train", "--resume", "{run}"],
        "corrupted checkpoint"),
    "checkpoint that is not a zip (resume)": (
        "checkpoints/ckpt-000000128.zip", lambda p: p.write_text("hello"),
        ["train", "--resume", "{run}"], "corrupted checkpoint"),
    "best.zip truncated (backtest)": ("best.zip", truncate, ["backtest", "{run}"],
                                      "corrupted checkpoint"),
    "best.zip with a flipped byte (backtest)": ("best.zip", flip, ["backtest", "{run}"],
                                                "corrupted checkpoint"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_file_is_one_line_exit_2_and_nothing_is_overwritten(
        case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    name, damage, argv, message = DAMAGE[case]
    run = make_run(tmp_path)
    damage(run / name)
    before = files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLKV_TRADER_TRACEBACK", raising=False)
    argv = [a.format(run=run) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mlkv-trader {argv[0]}: error: "), err
    assert message in err and "Traceback" not in err
    assert files(tmp_path) == before


def test_missing_data_source_leaves_no_run_or_sweep(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text(config_to_yaml(load_config(None, [*TINY, "data.source=nope.csv"])))
    for extra in ([], ["--seeds", "0-1"]):
        assert main(["train", "--config", str(cfg), "--runs-root", str(tmp_path / "runs"),
                     "--no-progress", *extra]) == 2
        assert "data.source: 'nope.csv'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path: Path,
                                                                 monkeypatch) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 1, 3, 0, 0, tzinfo=tz)

    monkeypatch.setattr(runs, "datetime", Frozen)
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(new_run_dir(tmp_path, "tiny", 0)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)
    assert sorted(p.name for p in made) == sorted(
        ["20261201-030000-s0"] + [f"20261201-030000-s0-{i}" for i in range(1, 8)])


def test_sweeps_started_in_the_same_second_get_distinct_directories(tmp_path: Path,
                                                                   monkeypatch) -> None:
    from experiments.sweeps import manifest

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 1, 3, 0, 0, tzinfo=tz)

    monkeypatch.setattr(manifest, "datetime", Frozen)
    config = load_config(None, TINY)
    a, b = (manifest.Sweep.create(config, [0], tmp_path) for _ in range(2))
    assert a.path != b.path and b.path.name == a.path.name + "-1"


def test_a_second_trainer_of_a_run_is_refused(tmp_path: Path) -> None:
    with run_lock(tmp_path), pytest.raises(RunBusyError, match=r"another .* is training"):
        with run_lock(tmp_path):
            pass
    with run_lock(tmp_path):  # released
        pass


def test_failed_write_keeps_the_old_file_and_names_the_new(tmp_path: Path, monkeypatch) -> None:
    import experiments.checkpoint as checkpoint

    path = tmp_path / "ckpt.zip"
    write_atomic(path, b"good")

    def full(fd, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(WriteError, match=r"cannot write .*ckpt.zip: No space left on device "
                                         r"\(the file already there is unchanged\)"):
        write_atomic(path, b"new and longer")
    assert path.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["ckpt.zip"]


def test_progress_log_resumes_without_torn_or_later_rows(tmp_path: Path) -> None:
    path = tmp_path / "progress.csv"
    path.write_text(PROGRESS + "384,0.125\n51")  # killed while writing the row of step 512
    assert read_progress_rows(path)[1] == [["128", "0.5"], ["256", "0.25"], ["384", "0.125"]]
    log = ProgressLog(path, keep_until=256)  # resumed from the checkpoint of step 256
    log.write({"time/total_timesteps": 384, "train/loss": 0.1, "eval/x": 1.5}, {})
    log.close()
    assert path.read_text() == (
        "time/total_timesteps,train/loss,eval/x\n128,0.5,\n256,0.25,\n384,0.1,1.5\n")
