"""Live progress of many tasks: one line per seed or run, read from their run directories."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from experiments.progress import console, err_console


def read_progress(run_dir: Path) -> tuple[int, float | None] | None:
    """``(env steps, fps)`` from the last complete row of a run's ``progress.csv``.

    Falls back to the step count of the newest checkpoint (before the first row is written);
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
