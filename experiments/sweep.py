"""Many seeds of one experiment: a sweep directory, its manifest, and running it anywhere.

Layout (whatever the backend)::

    runs/<name>/sweep-<UTC timestamp>/
        sweep.json      manifest: seeds, status, attempts, errors, run directories
        config.yaml     the base config (each run's own config.yaml has its seed)
        command.txt     every command that started or resumed the sweep
        seed-0/         an ordinary run directory (config.yaml, checkpoints/, final.zip, ...)
        seed-1/
        ...

Every attempt of a seed is ``train(resume=<run dir>)``: the first starts from scratch (the
run directory holds only its config), a retry or a re-run of the sweep continues from the
last checkpoint. Re-running the sweep skips seeds whose status is ``done``. The manifest is
rewritten atomically on every status change, so a killed driver leaves a readable one.

This module imports nothing heavy at the top: worker processes unpickle its task functions
before they pin their thread counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
from collections.abc import Hashable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from experiments.backends import Backend, Outcome, Resources, TaskListener, run_tasks
from experiments.progress import console, err_console

if TYPE_CHECKING:
    from experiments.config import TrainConfig
    from experiments.evaluation.backtest import BacktestResult, SeedPasses

FORMAT = "mlkv-trader-sweep"
VERSION = 1
MANIFEST = "sweep.json"
STATUSES = ("pending", "running", "done", "failed")


class SweepError(RuntimeError):
    """A sweep cannot start or continue: bad seeds, not a sweep directory, busy, ..."""


def parse_seeds(spec: str) -> list[int]:
    """Seeds from ``"0-9"``, ``"0,2,5"`` or a mix (``"0-3,7"``), sorted, without repeats.

    Raises:
        SweepError: the spec is empty, not made of integers and ranges, or a range is empty.
    """
    seeds: set[int] = set()
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or not all(parts):
        raise SweepError(f"--seeds {spec!r}: give seeds like 0-9, 0,2,5 or 0-3,7.")
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise SweepError(
                f"--seeds {spec!r}: {part!r} is not a seed (integer >= 0) or a range LOW-HIGH."
            )
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if high < low:
            raise SweepError(
                f"--seeds {spec!r}: range {part} is empty; write LOW-HIGH, LOW <= HIGH."
            )
        seeds.update(range(low, high + 1))
    return sorted(seeds)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from experiments.checkpoint import write_atomic

    write_atomic(path, json.dumps(doc, indent=1).encode())


@dataclass
class SeedRecord:
    """One seed's line in ``sweep.json``."""

    seed: int
    run_dir: str  # relative to the sweep directory
    status: str = "pending"  # pending | running | done | failed
    attempts: int = 0  # attempts started, over every invocation of the sweep
    error: str | None = None  # "Type: message" of the last failure (None once done)
    traceback: str | None = None  # its full traceback
    started: str | None = None  # UTC time the latest attempt started
    finished: str | None = None  # UTC time the seed finished or gave up
    host: str | None = None  # the machine that finished the seed


@dataclass
class Sweep:
    """A sweep directory and its manifest. Create with :meth:`create`, reopen with :meth:`open`."""

    path: Path
    name: str
    created: str
    records: dict[int, SeedRecord] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: TrainConfig, seeds: list[int], runs_root: str | Path) -> Sweep:
        """Make ``runs_root/<name>/sweep-<timestamp>/`` with one run directory per seed."""
        from experiments.checkpoint import write_atomic
        from experiments.config import config_to_yaml

        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        base = Path(runs_root) / config.name
        for i in range(1000):
            path = base / (f"sweep-{stamp}" + (f"-{i}" if i else ""))
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        else:
            raise SweepError(f"cannot create a sweep directory under {base}")
        write_atomic(path / "config.yaml", config_to_yaml(config).encode())
        sweep = cls(path=path, name=config.name, created=_now())
        sweep.add_seeds(seeds)
        return sweep

    @classmethod
    def open(cls, path: str | Path) -> Sweep:
        """Read the sweep at ``path``.

        Raises:
            SweepError: no ``sweep.json`` there, or not one this version can read.
        """
        path = Path(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise SweepError(
                f"{path}: not a sweep directory (no {MANIFEST}). Start a sweep with "
                "`mlkv-trader train --config FILE --seeds 0-9`."
            )
        try:
            doc = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise SweepError(f"{manifest}: not valid JSON ({err}).") from err
        if doc.get("format") != FORMAT or doc.get("version", 0) > VERSION:
            raise SweepError(f"{manifest}: not a sweep manifest this mlkv-trader can read.")
        records = {int(r["seed"]): SeedRecord(**r) for r in doc["seeds"]}
        return cls(path, doc["name"], doc["created"], records, doc.get("backend", {}))

    def base_config(self) -> TrainConfig:
        """The sweep's base config (its ``config.yaml``)."""
        from experiments.config import load_config

        return load_config(self.path / "config.yaml")

    def run_dir(self, seed: int) -> Path:
        """The run directory of ``seed``."""
        return self.path / self.records[seed].run_dir

    def add_seeds(self, seeds: list[int]) -> list[int]:
        """Add seeds not in the sweep yet (their run directories hold their config); saves."""
        new = [s for s in seeds if s not in self.records]
        for seed in new:
            self.records[seed] = SeedRecord(seed=seed, run_dir=f"seed-{seed}")
            self._write_run_config(seed)
        self.records = dict(sorted(self.records.items()))
        self.save()
        return new

    def _write_run_config(self, seed: int) -> None:
        from dataclasses import replace

        from experiments.checkpoint import write_atomic
        from experiments.config import config_to_yaml, load_config

        run = self.run_dir(seed)
        run.mkdir(parents=True, exist_ok=True)
        config = replace(self.base_config(), seed=seed)
        write_atomic(run / "config.yaml", config_to_yaml(config).encode())
        if load_config(run / "config.yaml") != config:  # what train(resume=run) will read
            raise SweepError(
                f"{run / 'config.yaml'}: the config does not survive a YAML round trip."
            )

    def todo(self) -> list[int]:
        """Seeds to run: all but those done (a ``done`` seed without final.zip is redone)."""
        out = []
        for seed, rec in self.records.items():
            if rec.status == "done" and (self.run_dir(seed) / "final.zip").is_file():
                continue
            if not (self.run_dir(seed) / "config.yaml").is_file():
                self._write_run_config(seed)
            out.append(seed)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written to ``sweep.json``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "created": self.created,
            "updated": _now(),
            "config": "config.yaml",
            "backend": self.backend,
            "seeds": [asdict(r) for r in self.records.values()],
        }

    def save(self) -> None:
        """Write ``sweep.json`` atomically."""
        _write_json(self.path / MANIFEST, self.to_dict())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the sweep's lock file, so two drivers never run the same sweep at once."""
        import fcntl

        with open(self.path / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise SweepError(
                    f"{self.path}: another `mlkv-trader train` is running this sweep; wait for "
                    "it to end (or stop it) before resuming."
                ) from err
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


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


def read_progress(run_dir: Path) -> tuple[int, float | None] | None:
    """``(env steps, fps)`` from the last complete row of a run's ``progress.csv``.

    Falls back to the step count of the newest checkpoint (a resumed run restarts its CSV);
    None when neither exists yet. Tolerates a file being written or rewritten meanwhile.
    """
    best: tuple[int, float | None] | None = None
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.zip"))
    if ckpts:
        with contextlib.suppress(ValueError):
            best = (int(ckpts[-1].stem.split("-")[1]), None)
    try:
        with open(run_dir / "progress.csv", "rb") as f:
            header = f.readline().decode(errors="replace").rstrip("\r\n").split(",")
            size = f.seek(0, 2)
            f.seek(max(0, size - 16384))
            tail = f.read().decode(errors="replace")
    except OSError:
        return best
    if "time/total_timesteps" not in header:
        return best
    i_steps = header.index("time/total_timesteps")
    i_fps = header.index("time/fps") if "time/fps" in header else None
    for line in reversed(tail.split("\n")[:-1]):  # complete lines only
        fields = line.rstrip("\r").split(",")
        if len(fields) != len(header) or fields == header:
            continue
        try:
            steps = int(float(fields[i_steps]))
            fps = float(fields[i_fps]) if i_fps is not None and fields[i_fps] else None
        except ValueError:
            continue
        if best is None or steps >= best[0]:
            return steps, fps
        return best
    return best


class SeedBoard:
    """One live line per task: status, a bar over steps, steps, fps, elapsed (rich).

    Args:
        labels: key -> label shown first on its line.
        total: steps per task (None: no step count, e.g. backtests).
        enabled: draw it; when False only the notes are printed.
        title: printed above the lines.
    """

    def __init__(
        self,
        labels: dict[Hashable, str],
        total: int | None,
        *,
        enabled: bool = True,
        title: str = "",
    ) -> None:
        self.total, self.enabled, self.title = total, enabled, title
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.fields[status]:<9}"),
            BarColumn(bar_width=12),  # a line fits 80 columns (logs, CI)
            TextColumn("{task.fields[steps]:>15}"),
            TextColumn("{task.fields[fps]:>7} fps"),
            TimeElapsedColumn(),
            console=err_console,
            disable=not enabled,
            transient=False,
            refresh_per_second=4,
        )
        width = max((len(v) for v in labels.values()), default=0)
        self._tasks = {
            key: self._progress.add_task(
                label.ljust(width),
                total=total or 1,
                start=False,
                status="pending",
                steps="-",
                fps="-",
            )
            for key, label in labels.items()
        }

    def __enter__(self) -> SeedBoard:
        if self.enabled and self.title:
            err_console.print(escape(self.title))
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def status(self, key: Hashable, text: str, *, start: bool = False, done: bool = False) -> None:
        """Set a line's status text; ``start`` starts its clock, ``done`` fills its bar."""
        task = self._tasks[key]
        if start:
            self._progress.start_task(task)
        if done:
            self._progress.update(task, completed=self.total or 1)
            self._progress.stop_task(task)
        self._progress.update(task, status=text)

    def steps(self, key: Hashable, steps: int, fps: float | None) -> None:
        """Set a line's step count and speed."""
        total = f"/{self.total:,}" if self.total else ""
        self._progress.update(
            self._tasks[key],
            completed=steps,
            steps=f"{steps:,}{total}",
            fps="-" if fps is None else f"{fps:,.0f}",
        )

    def note(self, text: str) -> None:
        """Print a line above the board (or plainly when the board is off)."""
        (self._progress.console if self.enabled else console).print(text)


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


# ---------------------------------------------------------------------------- backtests


def expand_runs(paths: list[Path], seeds: list[int] | None = None) -> list[Path]:
    """Run directories from run and sweep directories, keeping only ``seeds`` if given.

    A sweep directory stands for its ``done`` seeds' run directories, in seed order; its
    other seeds are skipped with a note.

    Raises:
        SweepError: a requested seed is in none of the runs.
    """
    import yaml

    found: list[tuple[Path, int | None]] = []
    for path in paths:
        if (path / MANIFEST).is_file():
            sweep = Sweep.open(path)
            for seed, rec in sweep.records.items():
                if seeds is not None and seed not in seeds:
                    continue
                if rec.status == "done":
                    found.append((sweep.run_dir(seed), seed))
                else:
                    console.print(
                        f"[yellow]{escape(str(path))}: skipping seed {seed} ({rec.status})"
                    )
        else:
            seed = None
            if seeds is not None and (path / "config.yaml").is_file():
                seed = int(
                    (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("seed", 0)
                )
            found.append((path, seed))
    if seeds is None:
        return [p for p, _ in found]
    runs = [p for p, s in found if s in seeds]
    missing = sorted(set(seeds) - {s for _, s in found})
    if missing:
        raise SweepError(
            f"--seeds: no finished run for seed(s) {', '.join(map(str, missing))} in "
            f"{', '.join(map(str, paths))}."
        )
    return runs


def backtest_run(
    run_dir: str,
    name: str,
    reference: str,
    data: str | None,
    split: str,
    prefer: str,
    passes: int,
    seed: int,
    index: int,
) -> SeedPasses:
    """Backtest one run in a worker: its K stochastic passes, deterministic and random passes.

    The bars and env come from the ``reference`` run (the first of the set), and the passes
    are seeded by ``(seed, index)``, exactly as in the single-process backtest.
    """
    from experiments.evaluation.backtest import policy_passes
    from experiments.evaluation.runs import load_policy

    config, candles = _reference_bars(reference, data, split)
    policy, _ = load_policy(run_dir, candles=candles, prefer=prefer)
    return policy_passes(
        policy, candles, index=index, passes=passes, env_config=config.env, seed=seed,
        name=name,
    )


def _reference_bars(reference: str | Path, data: str | None, split: str) -> tuple[Any, Any]:
    """The run config of ``reference`` and the bars a backtest of its set runs on."""
    from experiments.evaluation.cli import candles_to_test
    from experiments.train import load_run_config

    config = load_run_config(reference)
    return config, candles_to_test(config, data, split)


class _BacktestListener(TaskListener):
    def __init__(self, board: SeedBoard, labels: dict[int, str], attempts: int) -> None:
        self.board, self.labels, self.attempts = board, labels, attempts

    def started(self, key: Hashable, attempt: int) -> None:
        label = "running" if attempt == 1 else f"running (try {attempt})"
        self.board.status(key, label, start=attempt == 1)

    def retrying(self, key: Hashable, outcome: Outcome) -> None:
        self.board.note(
            f"[yellow]{escape(self.labels[key])} failed: {escape(str(outcome.error))}; retrying"
        )

    def finished(self, key: Hashable, outcome: Outcome, attempts: int) -> None:
        if outcome.ok:
            self.board.status(key, "[green]done", done=True)
        else:
            self.board.status(key, "[red]failed")
            self.board.note(
                f"[red]{escape(self.labels[key])} failed after {attempts} tries: "
                f"{escape(str(outcome.error))}"
            )


def backtest_runs(
    runs: list[Path],
    backend: Backend,
    *,
    passes: int,
    seed: int = 0,
    data: str | None = None,
    split: str = "test",
    prefer: str = "best",
    attempts: int = 2,
    show_progress: bool = True,
) -> tuple[BacktestResult | None, dict[Path, str]]:
    """Backtest runs as one task each on ``backend``, then judge them together.

    Run ``i`` is :func:`~experiments.evaluation.backtest.policy_passes` with index ``i``,
    and the driver joins them with :func:`~experiments.evaluation.backtest.combine`, so every pass,
    the random baseline and the verdict equal the single-process backtest's.

    Returns:
        The combined result over the runs that succeeded (None if none did), and the failed
        runs with their errors.
    """
    labels = {i: str(r) for i, r in enumerate(runs)}
    tasks = {
        i: (
            backtest_run,
            (
                str(r.resolve()),
                str(r),
                str(runs[0].resolve()),
                data,
                split,
                prefer,
                passes,
                seed,
                i,
            ),
        )
        for i, r in enumerate(runs)
    }
    board = SeedBoard(
        {i: r.name for i, r in enumerate(runs)},  # notes name the whole path
        None,
        enabled=show_progress,
        title=f"backtest on {backend.name} ({backend.slots} at once)",
    )
    with board:
        outcomes = run_tasks(
            tasks, backend, attempts=attempts, listener=_BacktestListener(board, labels, attempts)
        )
    failed = {runs[i]: o.error or "" for i, o in outcomes.items() if not o.ok}
    parts = [outcomes[i].value for i in sorted(outcomes) if outcomes[i].ok]
    if not parts:
        return None, failed
    from experiments.evaluation.backtest import combine

    config, candles = _reference_bars(runs[0], data, split)
    result = combine(parts, candles, env_config=config.env, seed=seed)
    result.settings["backend"] = backend.name
    return result, failed


def run_backtest_sweep(args: argparse.Namespace, backend: Backend) -> int:
    """`mlkv-trader backtest --backend ...`: one task per run, then JSON + HTML + verdict.

    Returns:
        0, or 1 when a run failed (the report then covers the others and says so).
    """

    from experiments.evaluation.cli import default_out, publish
    from experiments.train import load_run_config

    result, failed = backtest_runs(
        args.runs,
        backend,
        passes=args.passes,
        seed=args.seed,
        data=args.data,
        split=args.split,
        prefer=args.checkpoint,
        attempts=1 + args.retries,
        show_progress=not args.no_progress,
    )
    if result is None:
        console.print("[red]every run failed; no report written.")
        return 1
    summary = result.summary()
    summary["settings"].update(
        {
            "split": args.split,
            "data": args.data or load_run_config(args.runs[0]).data.source,
            "checkpoint": args.checkpoint,
            "failed_runs": {str(k): v for k, v in failed.items()},
        }
    )
    publish(summary, args.out or default_out(args.runs))
    if failed:
        console.print(
            f"[red]{len(failed)} run(s) failed and are left out of the verdict: "
            + escape("; ".join(f"{k}: {v}" for k, v in failed.items()))
        )
        return 1
    return 0
