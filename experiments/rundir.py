"""Run directories: ``runs/<name>/<timestamp>-s<seed>/`` with everything needed to reproduce.

Layout::

    config.yaml      resolved config (every field, defaults included)
    command.txt      the command line that started (or resumed) the run
    versions.json    python, package versions, git commit, device
    progress.csv     SB3 logger output
    tb/              TensorBoard events
    checkpoints/     ckpt-<steps>.zip, written atomically every checkpoint_every steps
    best.zip         best validation return so far
    final.zip        the model at the end of training
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from experiments.checkpoint import write_atomic

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
    base = Path(root) / name
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
