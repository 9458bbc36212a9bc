"""Backtest many runs as one task each on a backend; the result equals the in-process one.

Run ``i`` is :func:`evaluation.policy_passes` with index ``i`` in a worker, and the driver
joins them with :func:`evaluation.combine`, so every pass, the random baseline and the
verdict equal those of :func:`experiments.backtesting.backtest_runs` in one process.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from experiments.sweeps.backends import Backend, Outcome, TaskListener, run_tasks
from experiments.sweeps.board import SeedBoard

if TYPE_CHECKING:
    from evaluation import BacktestResult, SeedPasses


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
    from evaluation import policy_passes
    from experiments.runs import load_policy

    config, candles = _reference_bars(reference, data, split)
    policy, _ = load_policy(run_dir, candles=candles, prefer=prefer)
    return policy_passes(
        policy,
        candles,
        index=index,
        passes=passes,
        env_config=config.env,
        seed=seed,
        name=name,
    )


def _reference_bars(reference: str | Path, data: str | None, split: str) -> tuple[Any, Any]:
    """The run config of ``reference`` and the bars a backtest of its set runs on."""
    from experiments.factory import candles_to_test
    from experiments.runs import load_run_config

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


def backtest_on(
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
    sample: Any = None,
    bars_per_year: float | None = None,
) -> tuple[BacktestResult | None, dict[Path, str]]:
    """Backtest runs as one task each on ``backend``, then judge them together.

    See the module docstring: the result equals the single-process backtest's.

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
    from evaluation import combine

    config, candles = _reference_bars(runs[0], data, split)
    result = combine(
        parts, candles, env_config=config.env, seed=seed, sample=sample,
        bars_per_year=bars_per_year,
    )
    result.settings["backend"] = backend.name
    return result, failed
