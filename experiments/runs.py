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

import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from stable_baselines3.common.logger import KVWriter, filter_excluded_keys
from stable_baselines3.common.policies import BasePolicy

from envs import MarketReplayEnv
from evaluation.backtest import check_document, to_json
from evaluation.report import render_report
from experiments.checkpoint import (
    TMP_SUFFIX,
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
    write_atomic,
)
from experiments.config import TrainConfig, check_name, load_config
from experiments.errors import RunBusyError, WriteError
from experiments.factory import build_policy, load_split
from experiments.schema import ConfigError, to_dict

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


def write_metadata(run_dir: Path, config_yaml: str | None, argv: list[str] | None = None) -> None:
    """Write ``config.yaml`` (unless None: a resumed run keeps its own), write
    ``versions.json`` and append the command line to ``command.txt``."""
    if config_yaml is not None:
        write_atomic(run_dir / "config.yaml", config_yaml.encode())
    write_atomic(run_dir / "versions.json", json.dumps(versions(), indent=2).encode())
    command = shlex.join(argv if argv is not None else sys.argv)
    try:
        with open(run_dir / "command.txt", "a") as f:
            f.write(command + "\n")
    except OSError as err:
        raise WriteError(f"cannot write {run_dir / 'command.txt'}: {err.strerror or err}.") from err


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
    """The resolved config saved in a run directory (validated like any YAML experiment).

    A run writes every key, so a missing one means a truncated or damaged file: that is an
    error, not a default (a default would silently change the model, costs or budget).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml).")
    text = path.read_text()
    if text and not text.endswith("\n"):  # a cut inside the last value still parses
        raise ConfigError(
            str(path),
            "ends in the middle of a line: the file is truncated. Restore it (a sweep keeps "
            "its base config.yaml).",
        )
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError:
        values = None  # load_config below says where
    if isinstance(values, dict):  # missing keys first: defaults would hide a truncation
        default = TrainConfig()
        sections = {
            f.name
            for f in dataclasses.fields(default)
            if dataclasses.is_dataclass(getattr(default, f.name))
        }
        missing = list(_missing_keys(values, to_dict(default), sections))
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConfigError(
                str(path),
                f"missing key(s) {', '.join(missing[:3])}{more}: a run writes every key, so "
                "the file is truncated or damaged. Restore it (a sweep keeps its base "
                "config.yaml) or add the keys with their values at training time.",
            )
    config = load_config(path)
    return config


def _missing_keys(
    values: dict[str, Any], template: dict[str, Any], sections: set[str]
) -> Iterator[str]:
    """Top-level keys and section keys (``env.window``) of ``template`` absent from ``values``."""
    for key, default in template.items():
        if key not in values:
            yield key
        elif isinstance(default, dict) and key in sections and isinstance(values[key], dict):
            yield from (f"{key}.{k}" for k in default if k not in values[key])


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while training there: a second trainer of the same run is
    refused (two would interleave checkpoints). Released when the process ends, even by
    ``kill -9``. Filesystems without locks are trusted as they are.

    Raises:
        WriteError: the run directory cannot be written.
        RunBusyError: another process trains this run.
    """
    try:
        f = open(run_dir / ".lock", "a")
    except OSError as err:
        raise WriteError(
            f"{run_dir}: cannot write in this run directory ({err.strerror or err}); nothing "
            "was changed. Make it writable (or copy the run elsewhere) and run again."
        ) from err
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RunBusyError(
                f"{run_dir}: another `mlkv-trader train` is training this run; wait for it to "
                "end (or stop it) before resuming."
            ) from err
        except OSError:
            pass  # no locks on this filesystem
        try:  # an existing .lock opens even in a read-only folder: try a new file too
            fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".probe.", suffix=TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise WriteError(
                f"{run_dir}: cannot write in this run directory ({err.strerror or err}); "
                "nothing was changed. Make it writable (or copy the run elsewhere) and run again."
            ) from err
        yield


def clean_stale_files(run_dir: Path) -> list[Path]:
    """Delete temporary files that a killed write left in a run (call under :func:`run_lock`)."""
    return remove_stale_temporaries(run_dir) + remove_stale_temporaries(run_dir / "checkpoints")


# ---------------------------------------------------------------------------- progress.csv

PROGRESS = "progress.csv"
STEP_COLUMN = "time/total_timesteps"


def read_progress_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and complete rows of a run's ``progress.csv`` (a torn last line, which a killed
    run leaves, is dropped). A missing or empty file has no header and no rows.

    Raises:
        ValueError: the file is not a progress log (no step column, rows of the wrong width,
            a step that is not a number); the message names the line.
    """
    if not path.is_file():
        return [], []
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err.reason}). {_MOVE_AWAY}") from err
    complete = text[: text.rfind("\n") + 1]  # drop a torn last line
    lines = list(csv.reader(io.StringIO(complete)))
    if not lines:
        return [], []
    header, rows = lines[0], lines[1:]
    if STEP_COLUMN not in header:
        raise ValueError(f"{path} line 1: no {STEP_COLUMN} column. {_MOVE_AWAY}")
    i_step = header.index(STEP_COLUMN)
    for n, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path} line {n}: {len(row)} fields, the header has {len(header)}. {_MOVE_AWAY}"
            )
        try:
            float(row[i_step])
        except ValueError:
            raise ValueError(
                f"{path} line {n}: step {row[i_step]!r} is not a number. {_MOVE_AWAY}"
            ) from None
    return header, rows


_MOVE_AWAY = (
    "It is not a progress log as training writes it (damaged?); move it away (training "
    "does not need it) and run the command again."
)


class ProgressLog(KVWriter):
    """SB3's CSV output, made safe to kill and to resume: ``progress.csv`` only ever grows by
    whole rows (a new column rewrites the file atomically, where SB3 rewrites it in place),
    and a resumed run keeps the rows up to its checkpoint instead of starting a new file.

    Args:
        path: the ``progress.csv`` to write.
        keep_until: resuming from this step: keep the rows up to it (None: a new file).
    """

    def __init__(self, path: Path, keep_until: int | None = None) -> None:
        self.path = Path(path)
        self.keys: list[str] = []
        self.rows: list[list[str]] = []
        if keep_until is not None:
            self.keys, rows = read_progress_rows(self.path)
            if self.keys:
                i_step = self.keys.index(STEP_COLUMN)
                self.rows = [r for r in rows if float(r[i_step]) <= keep_until]
        self._rewrite()

    def _rewrite(self) -> None:
        lines = [self.keys, *self.rows] if self.keys else []
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(lines)
        write_atomic(self.path, buf.getvalue().encode())
        self.file = open(self.path, "a")

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        key_values = filter_excluded_keys(key_values, key_excluded, "csv")
        extra = [k for k in key_values if k not in self.keys]
        if extra:
            self.file.close()
            self.keys.extend(extra)
            self.rows = [r + [""] * len(extra) for r in self.rows]
            self._rewrite()
        row = ["" if key_values.get(k) is None else str(key_values[k]) for k in self.keys]
        self.rows.append(row)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        try:
            self.file.write(buf.getvalue())
            self.file.flush()
        except OSError as err:
            raise WriteError(f"cannot write {self.path}: {err.strerror or err}.") from err

    def close(self) -> None:
        self.file.close()


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
