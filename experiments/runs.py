"""Run directories: what a run writes, and everything that reads a run back.

A training run lives in ``runs/<name>/<timestamp>-s<seed>/``::

    config.yaml      resolved config (every field, defaults included)
    command.txt      the command line that started (or resumed) the run
    versions.json    python, package versions, git commit, device
    progress.csv     SB3 logger output
    tb/              TensorBoard events
    checkpoints/     ckpt-<steps>.zip, written atomically every checkpoint_every steps
    best.zip         best validation return so far
    final.zip        the model at the end of training

A backtest writes ``backtest.json`` (every number) and ``report.html`` next to its runs.
Every file is written atomically (:func:`~experiments.checkpoint.write_atomic`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from stable_baselines3.common.policies import BasePolicy

from envs import MarketReplayEnv
from evaluation.backtest import check_document, to_json
from evaluation.report import render_report
from experiments.checkpoint import CheckpointError, load_checkpoint, write_atomic
from experiments.config import TrainConfig, check_name, load_config
from experiments.factory import build_policy, load_split

PACKAGES = (
    "mlkv-trader",
    "torch",
    "numpy",
    "pandas",
    "numba",
    "gymnasium",
    "stable-baselines3",
    "scipy",
)


def new_run_dir(root: str | Path, name: str, seed: int) -> Path:
    """Create ``root/name/<UTC timestamp>-s<seed>`` (a suffix keeps concurrent runs apart)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / check_name(name)
    for i in range(1000):
        path = base / (f"{stamp}-s{seed}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {base}")


def write_metadata(run_dir: Path, config_yaml: str, argv: list[str] | None = None) -> None:
    """Write ``config.yaml``, append to ``command.txt`` and write ``versions.json``."""
    write_atomic(run_dir / "config.yaml", config_yaml.encode())
    command = shlex.join(argv if argv is not None else sys.argv)
    with open(run_dir / "command.txt", "a") as f:
        f.write(command + "\n")
    write_atomic(run_dir / "versions.json", json.dumps(versions(), indent=2).encode())


def versions() -> dict[str, str | None]:
    """Python and package versions, platform and the git commit of the working tree."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str | None:
    """The current git commit (with ``-dirty`` if the tree has changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty.strip() else "")


CHECKPOINTS = ("best.zip", "final.zip")


def find_checkpoint(run_dir: Path, prefer: str = "best") -> Path:
    """``best.zip`` (or ``final.zip`` with ``prefer="final"``), else the other, else the newest
    periodic checkpoint; a clear error when the run has none."""
    order = CHECKPOINTS if prefer == "best" else CHECKPOINTS[::-1]
    for name in order:
        if (run_dir / name).is_file():
            return run_dir / name
    periodic = sorted((run_dir / "checkpoints").glob("ckpt-*.zip"))
    if periodic:
        return periodic[-1]
    raise FileNotFoundError(
        f"{run_dir}: no checkpoint (best.zip, final.zip or checkpoints/ckpt-*.zip). Has the "
        "run finished, or was it interrupted before its first checkpoint?"
    )


def load_policy(
    run_dir: str | Path,
    *,
    candles: pd.DataFrame | None = None,
    prefer: str = "best",
    device: str = "cpu",
) -> tuple[BasePolicy, TrainConfig]:
    """Rebuild a run's policy from its ``config.yaml`` and load its weights.

    PPO runs give the MLKV actor-critic (its passes encode the test period once); SAC runs
    give SB3's SAC policy with the MLKV extractor (its passes call ``predict`` per step, and
    the report has no sigma series for them).

    Args:
        run_dir: a run directory written by ``mlkv-trader train``.
        candles: data the policy will trade, only to check it yields the same observation
            shapes as training (features per bar, window).
        prefer: ``"best"`` (best validation return) or ``"final"`` checkpoint.
        device: torch device.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint in it.
        CheckpointError: a corrupted checkpoint, or weights that do not fit the config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory.")
    config = load_run_config(run_dir)
    probe = candles if candles is not None else load_split(config.data).test
    env = MarketReplayEnv(probe, config.env.replace(mode="test"))
    policy = build_policy(config, env.observation_space, env.action_space).to(device)
    path = find_checkpoint(run_dir, prefer)
    entries, _ = load_checkpoint(path, map_location=device)
    state = _policy_state(entries, path)
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the weights do not fit the model described by {run_dir / 'config.yaml'} "
            f"(was the config edited after training?): {str(err).splitlines()[0]}"
        ) from err
    policy.set_training_mode(False)
    return policy, config


def _policy_state(entries: dict[str, Any], path: Path) -> dict[str, Any]:
    if "policy" not in entries:
        raise CheckpointError(f"{path}: holds no policy weights.")
    return entries["policy"]


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config saved in a run directory (validated like any YAML experiment)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml).")
    return load_config(path)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoints/ckpt-*.zip`` of a run, or None."""
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.zip"))
    return ckpts[-1] if ckpts else None


# ---------------------------------------------------------------------------- backtest files


def write_json(summary: dict[str, Any], path: str | Path) -> Path:
    """Write ``backtest.json`` atomically (NaN/inf become null)."""
    path = Path(path)
    write_atomic(path, to_json(summary).encode())
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a ``backtest.json``, checking that it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such backtest file.")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run `mlkv-trader backtest`.") from err
    return check_document(doc, str(path))


def write_report(summary: dict[str, Any], path: str | Path) -> Path:
    """Render the HTML report of a backtest summary and write it atomically."""
    path = Path(path)
    write_atomic(path, render_report(summary).encode())
    return path


def publish(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``backtest.json`` and ``report.html`` into ``out``; returns both paths."""
    return write_json(summary, out / "backtest.json"), write_report(summary, out / "report.html")


def default_out(runs: list[Path]) -> Path:
    """Where a backtest of ``runs`` writes: the run itself, or the runs' common parent."""
    if len(runs) == 1:
        return runs[0]
    return Path(os.path.commonpath([str(r.resolve()) for r in runs]))
