"""Backtest many runs as one task each on a backend; the result equals the in-process one.

Run ``i`` is :func:`evaluation.policy_passes` with index ``i`` in a worker, and the driver
joins them with :func:`evaluation.combine`, so every pass, the random baseline and the
verdict equal those of :func:`experiments.backtesting.backtest_runs` in one process.

A run that is too long for one task splits further by pass groups (``pass_groups``): task
``(i, g)`` keeps passes ``g*K/G .. (g+1)*K/G - 1`` of run ``i`` and their random passes
(:func:`evaluation.policy_passes` ``pass_slice``); every task still steps the policy for
all K passes, so its draws and passes are exactly the in-process ones, and
:func:`evaluation.backtest.merge_pass_groups` joins the groups (per-bar pass averages agree
to float rounding, every other number exactly).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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
    pass_slice: tuple[int, int] | None = None,
    keep_ledgers: bool = False,
) -> SeedPasses:
    """Backtest one run in a worker: its K stochastic passes, deterministic and random passes.

    The bars and env come from the ``reference`` run (the first of the set), and the passes
    are seeded by ``(seed, index)``, exactly as in the single-process backtest.
    ``pass_slice = (lo, hi)`` keeps only passes ``lo .. hi - 1`` (a pass group).
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
        pass_slice=None if pass_slice is None else slice(*pass_slice),
        keep_ledgers=keep_ledgers,
    )


def pass_group_slices(passes: int, groups: int) -> list[tuple[int, int]]:
    """``groups`` contiguous ``(lo, hi)`` ranges covering passes ``0 .. passes - 1``.

    Raises:
        ValueError: fewer than 1 group, or more groups than passes.
    """
    if int(groups) != groups or not 1 <= groups <= passes:
        raise ValueError(f"pass groups must be an integer in [1, passes={passes}], got {groups}.")
    edges = np.linspace(0, passes, int(groups) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


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


def _run(key: Hashable) -> int:
    """The run index of a task key: ``i`` or ``(i, group)``."""
    return key[0] if isinstance(key, tuple) else key  # type: ignore[index,return-value]


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
    pass_groups: int = 1,
    keep_ledgers: bool = False,
    sample: Any = None,
    bars_per_year: float | None = None,
) -> tuple[BacktestResult | None, dict[Path, str]]:
    """Backtest runs as one task each on ``backend``, then judge them together.

    See the module docstring: the result equals the single-process backtest's.
    ``pass_groups > 1`` splits each run into that many tasks by passes.

    Returns:
        The combined result over the runs that succeeded (None if none did), and the failed
        runs with their errors.
    """
    slices = pass_group_slices(passes, pass_groups)
    grouped = len(slices) > 1
    keys = [(i, g) if grouped else i for i in range(len(runs)) for g in range(len(slices))]
    labels = {
        key: str(runs[key[0]]) + (f" passes {slices[key[1]][0]}-{slices[key[1]][1] - 1}")
        if grouped
        else str(runs[key])
        for key in keys
    }
    tasks = {
        key: (
            backtest_run,
            (
                str(runs[_run(key)].resolve()),
                str(runs[_run(key)]),
                str(runs[0].resolve()),
                data,
                split,
                prefer,
                passes,
                seed,
                _run(key),
                slices[key[1]] if grouped else None,
                keep_ledgers,
            ),
        )
        for key in keys
    }
    board = SeedBoard(
        {key: runs[_run(key)].name + (f" [{key[1] + 1}/{len(slices)}]" if grouped else "")
         for key in keys},  # notes name the whole path
        None,
        enabled=show_progress,
        title=f"backtest on {backend.name} ({backend.slots} at once)",
    )
    with board:
        outcomes = run_tasks(
            tasks, backend, attempts=attempts, listener=_BacktestListener(board, labels, attempts)
        )
    failed = {runs[_run(k)]: o.error or "" for k, o in outcomes.items() if not o.ok}
    from evaluation import combine
    from evaluation.backtest import merge_pass_groups

    parts = [
        merge_pass_groups([outcomes[(i, g)].value for g in range(len(slices))])
        if grouped
        else outcomes[i].value
        for i in range(len(runs))
        if runs[i] not in failed
    ]
    if not parts:
        return None, failed

    config, candles = _reference_bars(runs[0], data, split)
    result = combine(
        parts, candles, env_config=config.env, seed=seed, keep_ledgers=keep_ledgers,
        sample=sample, bars_per_year=bars_per_year,
    )
    result.settings["backend"] = backend.name
    return result, failed
