"""Train every seed of a sweep on a backend (local processes or Ray), resumably.

Every attempt of a seed is ``train(resume=<run dir>)``: the first starts from scratch (the
run directory holds only its config), a retry or a re-run of the sweep continues from the
last checkpoint. Re-running the sweep skips seeds whose status is ``done``.
"""

from __future__ import annotations

import socket
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from experiments.errors import SweepError
from experiments.progress import console
from experiments.sweeps.backends import Backend, Outcome, Resources, TaskListener, run_tasks
from experiments.sweeps.board import SeedBoard, read_progress
from experiments.sweeps.manifest import Sweep, _now

if TYPE_CHECKING:
    from experiments.config import TrainConfig


def seed_resources(config: TrainConfig, cpus: int = 1, gpus: float | None = None) -> Resources:
    """What one seed of ``config`` asks a backend for: ``cpus`` cores, and a GPU (unless
    ``gpus`` says otherwise) when the config's device is CUDA."""
    if gpus is None:
        gpus = 1.0 if config.device.startswith("cuda") else 0.0
    return Resources(cpus=cpus, gpus=gpus)


def train_seed(run_dir: str, argv: list[str]) -> dict[str, str]:
    """One attempt at a seed, in a worker: ``train(resume=run_dir)``.

    Returns:
        ``{"run_dir": ..., "host": ...}``: where the run is and which machine trained it.

    Raises:
        SweepError: the run directory is not visible on this worker (no shared filesystem).
    """
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise SweepError(
            f"{run_dir} is not visible on worker {socket.gethostname()}: put --runs-root on a "
            "filesystem that every node mounts at the same path (see docs/scaling.md)."
        )
    from experiments.train import train

    done = train(resume=path, argv=argv, show_progress=False)
    return {"run_dir": str(done), "host": socket.gethostname()}


class _TrainListener(TaskListener):
    """Keeps the manifest and the board up to date as seeds move."""

    def __init__(self, sweep: Sweep, board: SeedBoard, attempts: int) -> None:
        self.sweep, self.board, self.attempts = sweep, board, attempts
        self._tries: dict[int, int] = {}

    def started(self, key: Hashable, attempt: int) -> None:
        rec = self.sweep.records[key]
        rec.status, rec.started = "running", _now()
        rec.attempts += 1
        self._tries[key] = attempt
        self.sweep.save()
        label = "running" if attempt == 1 else f"running (try {attempt})"
        self.board.status(key, label, start=attempt == 1)

    def retrying(self, key: Hashable, outcome: Outcome) -> None:
        rec = self.sweep.records[key]
        rec.error, rec.traceback = outcome.error, outcome.details
        self.sweep.save()
        self.board.note(
            f"[yellow]seed {key} failed (try {self._tries[key]}/{self.attempts}): "
            f"{escape(str(outcome.error))}; retrying from its last checkpoint"
        )

    def finished(self, key: Hashable, outcome: Outcome, attempts: int) -> None:
        rec = self.sweep.records[key]
        rec.finished = _now()
        if outcome.ok:
            rec.status, rec.error, rec.traceback = "done", None, None
            rec.host = (outcome.value or {}).get("host")
            self.board.steps(key, *(read_progress(self.sweep.run_dir(key)) or (0, None)))
            self.board.status(key, "[green]done", done=True)
        else:
            rec.status, rec.error, rec.traceback = "failed", outcome.error, outcome.details
            self.board.status(key, "[red]failed")
            self.board.note(
                f"[red]seed {key} failed after {attempts} tries: {escape(str(outcome.error))}"
            )
        self.sweep.save()

    def tick(self) -> None:
        for seed, rec in self.sweep.records.items():
            if rec.status == "running":
                progress = read_progress(self.sweep.run_dir(seed))
                if progress is not None:
                    self.board.steps(seed, *progress)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep invocation did."""

    sweep: Sweep
    ran: list[int]  # seeds attempted this time
    skipped: list[int]  # seeds already done before
    failed: list[int]  # seeds that failed every attempt this time


def run_sweep(
    sweep: Sweep,
    backend: Backend,
    *,
    add: list[int] | None = None,
    attempts: int = 2,
    argv: list[str] | None = None,
    show_progress: bool = True,
) -> SweepResult:
    """Train every seed of ``sweep`` that is not done yet, on ``backend``.

    Args:
        sweep: the sweep (new, or reopened to resume it).
        backend: where the seeds run.
        add: seeds to add to the sweep first (those already in it are kept as they are).
        attempts: tries per seed in this invocation (2 = one retry, from the checkpoint).
        argv: command line recorded in the sweep's and runs' ``command.txt``.
        show_progress: draw the per-seed board.

    Raises:
        SweepError: another driver holds this sweep.
        KeyboardInterrupt: after the running seeds checkpointed; they are left ``pending``.
    """
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    with sweep.lock():
        sweep.records = Sweep.open(sweep.path).records  # as the last driver left them
        sweep.add_seeds(add or [])
        with open(sweep.path / "command.txt", "a") as f:
            f.write(shlex.join(argv) + "\n")
        resources = getattr(backend, "resources", None)
        sweep.backend = {
            "name": backend.name,
            "slots": backend.slots,
            **(asdict(resources) if resources is not None else {}),
        }
        todo = sweep.todo()
        skipped = [s for s in sweep.records if s not in todo]
        for seed in todo:
            rec = sweep.records[seed]
            if rec.status != "failed":
                rec.status = "pending"
        sweep.save()
        total = sweep.base_config().total_steps
        board = SeedBoard(
            {s: f"seed {s}" for s in sweep.records},
            total,
            enabled=show_progress,
            title=f"sweep {sweep.path} on {backend.name} ({backend.slots} at once)",
        )
        for seed in skipped:
            board.steps(seed, total, None)
            board.status(seed, "[green]done (earlier)", done=True)
        tasks = {s: (train_seed, (str(sweep.run_dir(s).resolve()), argv)) for s in todo}
        listener = _TrainListener(sweep, board, attempts)
        try:
            with board:
                outcomes = run_tasks(tasks, backend, attempts=attempts, listener=listener)
        except BaseException:
            for rec in sweep.records.values():
                if rec.status == "running":
                    rec.status = "pending"
            sweep.save()
            raise
    failed = [s for s, o in outcomes.items() if not o.ok]
    return SweepResult(sweep, todo, skipped, sorted(failed))


def print_sweep(sweep: Sweep) -> None:
    """The manifest as a table: seed, status, attempts, run directory, error."""
    table = Table(title=escape(f"sweep {sweep.path}"))
    for col in ("seed", "status", "attempts", "run dir", "error"):
        table.add_column(col)
    colours = {"done": "green", "failed": "red", "running": "yellow"}
    for seed, rec in sweep.records.items():
        status = f"[{colours.get(rec.status, 'white')}]{rec.status}"
        table.add_row(str(seed), status, str(rec.attempts), rec.run_dir, escape(rec.error or ""))
    console.print(table)
