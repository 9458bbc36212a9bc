"""Fault injection: a run killed (``kill -9``) at any point resumes to the same weights, a
killed sweep resumes only its missing seeds, a failed write names the file and keeps the
last good checkpoint. docs/reliability.md tabulates these faults.

Kill points are drawn at random from a seeded generator: ``MLKV_FAULT_SEED`` (default 19)
picks them, ``MLKV_FAULT_ROUNDS`` (default 1) repeats each fault with new draws (a soak)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import load_checkpoint
from experiments.sweeps.manifest import MANIFEST

from .tiny import tiny_yaml

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("fault_runner.py")
SEED = int(os.environ.get("MLKV_FAULT_SEED", "19"))
ROUNDS = int(os.environ.get("MLKV_FAULT_ROUNDS", "1"))
LIMIT = 300  # seconds any one process may take before the test gives up on it

# 3 rollouts of 128 steps; checkpoints (every 192) and validations (every 128) out of step
TINY_YAML = tiny_yaml(total_steps=384, checkpoint_every=192)

#: fault -> passes through its point that any leg of a run makes (a kill draws one): a leg
#: starts at step 0 or at the checkpoint of step 256, so it makes at least one rollout of 64
#: steps (two envs), one update (2 epochs x 4 minibatches), two validations of 109 steps
#: (at 256, redone on resume, and at the end) and one .zip write (final.zip).
HITS = {"rollout": 64, "update": 8, "evaluation": 120, "checkpoint": 1}


def cli(*args: str, fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``mlkv-trader ARGS`` in a fresh process (with a planted fault)."""
    prefix = [str(RUNNER), fault[0], str(fault[1])] if fault else ["-m", "experiments"]
    return subprocess.run([sys.executable, *prefix, *args, "--no-progress"],
                          capture_output=True, text=True, timeout=LIMIT)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]["policy"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def only_run(root: Path) -> Path:
    (run,) = (root / "tiny").iterdir()
    return run


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def eval_steps(run: Path) -> list[str]:
    lines = (run / "progress.csv").read_text().splitlines()
    header = lines[0].split(",")
    i, j = header.index("time/total_timesteps"), header.index("eval/validation_log_return")
    return [f"{row.split(',')[i]}:{row.split(',')[j]}" for row in lines[1:]]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def baseline(config_file: Path, tmp_path_factory) -> Path:
    """The uninterrupted run (in its own process, like every run here)."""
    root = tmp_path_factory.mktemp("baseline")
    done = cli("train", "--config", str(config_file), "--runs-root", str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return only_run(root)


def test_killed_run_resumes_to_the_same_weights(baseline: Path, config_file: Path,
                                               tmp_path: Path) -> None:
    """Each round kills one run once per fault, in a random order and at a random pass
    through the fault's point: the start and every resume but the last are killed."""
    rng = random.Random(SEED)
    for k in range(ROUNDS):
        faults = [(f, rng.randint(1, n)) for f, n in rng.sample(sorted(HITS.items()), len(HITS))]
        root = tmp_path / f"round-{k}"
        for leg, fault in enumerate(faults):
            args = ["--resume", str(only_run(root))] if leg else [
                "--config", str(config_file), "--runs-root", str(root)]
            killed = cli("train", *args, fault=fault)
            assert killed.returncode == -signal.SIGKILL, (faults, leg, killed.stderr[-3000:])
            run = only_run(root)
            for ckpt in (run / "checkpoints").glob("*.zip"):  # what resume may pick: whole
                load_checkpoint(ckpt)
            if fault[0] == "checkpoint":  # the torn write is a hidden temporary, not a .zip
                assert list(run.rglob(".*.zip.*.tmp")), faults
        resumed = cli("train", "--resume", str(run))
        assert resumed.returncode == 0, (faults, resumed.stderr[-3000:])
        assert same(weights(run / "final.zip"), weights(baseline / "final.zip")), faults
        assert same(weights(run / "best.zip"), weights(baseline / "best.zip")), faults
        assert eval_steps(run) == eval_steps(baseline), faults
        assert not list(run.rglob("*.tmp")), faults


def test_full_disk_names_the_file_and_keeps_the_last_checkpoint(baseline: Path,
                                                              config_file: Path,
                                                              tmp_path: Path) -> None:
    # checkpoint writes: ckpt-000000256.zip, then final.zip: the disk is full at the second
    full = cli("train", "--config", str(config_file), "--runs-root", str(tmp_path),
               fault=("disk-full", 2))
    run = only_run(tmp_path)
    assert full.returncode == 2, full.stderr[-3000:]
    err = full.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot write" in err and "No space left on device" in err
    assert "last good checkpoint is" in err and "ckpt-000000256.zip" in err
    assert not list(run.rglob("*.tmp")) and not (run / "final.zip").exists()
    assert same(weights(run / "checkpoints" / "ckpt-000000256.zip"),
                weights(baseline / "checkpoints" / "ckpt-000000256.zip"))
    resumed = cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(weights(run / "final.zip"), weights(baseline / "final.zip"))


def test_read_only_run_is_refused_and_left_as_it_was(baseline: Path, tmp_path: Path,
                                                    capsys) -> None:
    import shutil

    from experiments.cli import main

    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    before = files(run)
    with read_only(run):
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write in this run directory" in err, err
    assert files(run) == before


class read_only:
    """Make a directory tree unwritable, even for root (``chattr +i``); skip if impossible."""

    def __init__(self, root: Path) -> None:
        self.dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]

    def __enter__(self) -> None:
        for d in self.dirs:
            d.chmod(0o555)
        probe = self.dirs[0] / ".probe"
        try:
            probe.touch()
        except PermissionError:
            self.immutable = False
            return
        probe.unlink()
        done = subprocess.run(["chattr", "+i", *map(str, self.dirs)], capture_output=True)
        self.immutable = True
        if done.returncode != 0:
            self.__exit__()
            pytest.skip("cannot make a directory read-only here (root without chattr)")

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "immutable", False):
            subprocess.run(["chattr", "-i", *map(str, self.dirs)], capture_output=True)
        for d in self.dirs:
            d.chmod(0o755)


# ------------------------------------------------------------------------------ sweeps


def read_manifest(sweep: Path) -> dict:
    """sweep.json, which must parse whenever it is read (it is replaced atomically)."""
    return json.loads((sweep / MANIFEST).read_text())


def wait_for(condition, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + LIMIT
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the driver ended before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def unlocked(run: Path) -> bool:
    """No process holds the run's lock (its trainer has exited)."""
    with open(run / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_killed_sweep_driver_resumes_only_the_missing_seeds(baseline: Path, config_file: Path,
                                                           tmp_path: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-m", "experiments", "train", "--config", str(config_file),
         "--seeds", "0-1", "--workers", "1", "--runs-root", str(tmp_path), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list((tmp_path / "tiny").glob(f"sweep-*/{MANIFEST}")), "the sweep",
                 driver)
        (sweep,) = (tmp_path / "tiny").glob("sweep-*")
        seen: list[dict] = []

        def seed_1_training() -> bool:
            seen.append(read_manifest(sweep))
            return (seen[-1]["seeds"][0]["status"] == "done"
                    and (sweep / "seed-1" / "progress.csv").is_file()
                    and len((sweep / "seed-1" / "progress.csv").read_text().splitlines()) > 1)

        wait_for(seed_1_training, "seed 1 to train", driver)
        driver.kill()  # kill -9 the driver; its worker gets SIGINT and checkpoints
        driver.wait(LIMIT)
    finally:
        if driver.poll() is None:
            driver.kill()
    wait_for(lambda: unlocked(sweep / "seed-1"), "seed 1's worker to exit")
    doc = read_manifest(sweep)
    assert [s["status"] for s in doc["seeds"]] == ["done", "running"]
    final_0 = (sweep / "seed-0" / "final.zip").stat().st_mtime_ns
    resumed = cli("train", "--sweep", str(sweep), "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipped (done earlier): seeds 0" in " ".join(resumed.stdout.split())
    doc = read_manifest(sweep)
    assert [(s["status"], s["attempts"]) for s in doc["seeds"]] == [("done", 1), ("done", 2)]
    assert (sweep / "seed-0" / "final.zip").stat().st_mtime_ns == final_0  # not run again
    assert same(weights(sweep / "seed-0" / "final.zip"), weights(baseline / "final.zip"))
    assert (sweep / "seed-1" / "final.zip").is_file()
    assert len(seen) > 1


def test_killed_ray_worker_is_retried_from_its_checkpoint(baseline: Path, config_file: Path,
                                                          tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from experiments.cli import main

    killed: list[int] = []

    def kill_worker() -> None:  # kill -9 the Ray worker training seed 0, after a checkpoint
        deadline = time.monotonic() + LIMIT
        while not killed and time.monotonic() < deadline:
            ckpts = list(tmp_path.glob("tiny/sweep-*/seed-0/checkpoints/ckpt-*.zip"))
            if ckpts:
                for pid in ray_task_pids("mlkv-task-0"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_worker, daemon=True)
    watcher.start()
    rc = main(["train", "--config", str(config_file), "--seeds", "0", "--backend", "ray",
               "--workers", "1", "--retries", "1", "--runs-root", str(tmp_path),
               "--no-progress"])
    watcher.join(5)
    assert killed and rc == 0
    (sweep,) = (tmp_path / "tiny").glob("sweep-*")
    (seed,) = read_manifest(sweep)["seeds"]
    assert seed["status"] == "done" and seed["attempts"] == 2 and seed["error"] is None
    assert same(weights(sweep / "seed-0" / "final.zip"), weights(baseline / "final.zip"))
    final = (sweep / "seed-0" / "final.zip").stat().st_mtime_ns
    assert main(["train", "--sweep", str(sweep), "--no-progress"]) == 0  # nothing left to run
    assert read_manifest(sweep)["seeds"][0]["attempts"] == 2
    assert (sweep / "seed-0" / "final.zip").stat().st_mtime_ns == final


def ray_task_pids(name: str) -> list[int]:
    """Processes whose title names the Ray task (Ray titles a busy worker ``ray::NAME``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"ray::{name}" in cmdline:
                pids.append(int(entry.name))
    return pids
