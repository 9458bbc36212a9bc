"""Progress display for long work: steps, fps, ETA and the latest validation return (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()  # results and notes (stdout)
err_console = Console(stderr=True)  # progress bars (stderr)


class TrainProgress:
    """A progress bar over env steps; a no-op when ``enabled`` is False (tests, logs)."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, title: str = "train"):
        self.total, self.start, self.enabled, self.title = total, start, enabled, title
        self._t0 = time.perf_counter()
        self._val = "n/a"
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=6),  # the whole line fits 80 columns (logs, CI)
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:>7} fps"),
            TextColumn("val {task.fields[val]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(
            title, total=total, completed=start, fps="-", val=self._val
        )

    def __enter__(self) -> TrainProgress:
        self._t0 = time.perf_counter()
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, steps: int) -> None:
        """Set the number of env steps done so far."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        fps = f"{(steps - self.start) / elapsed:,.0f}"
        self._progress.update(self._task, completed=steps, fps=fps, val=self._val)

    def validation(self, value: float) -> None:
        """Show the latest validation log return."""
        self._val = f"{value:+.4f}"
        self._progress.update(self._task, val=self._val)

    def note(self, text: str) -> None:
        """Print a line above the bar (always, even when the bar is disabled)."""
        console.print(text)
