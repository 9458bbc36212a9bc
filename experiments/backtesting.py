"""Backtest trained runs: load their policies, run the evaluator, write JSON + HTML.

:func:`backtest_runs` is what ``mlkv-trader backtest`` calls: in this process by default, or
one task per run on a backend (:mod:`experiments.sweeps.backtest`), with equal results.
:func:`compare_backtests` is ``mlkv-trader compare``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rich.markup import escape
from rich.table import Table

from evaluation import BacktestResult, backtest, stats
from evaluation.verdict import Sample
from experiments.factory import SPLITS, candles_to_test, load_market
from experiments.progress import console
from experiments.runs import default_out, load_policy, load_run_config, publish, read_json

if TYPE_CHECKING:
    from experiments.sweeps.backends import Backend


@dataclass(frozen=True)
class BacktestRequest:
    """What to backtest and where to write it (the flags of ``mlkv-trader backtest``)."""

    runs: tuple[Path, ...]
    """Run directories, one per training seed (sweeps already expanded)."""
    passes: int = 50
    """Stochastic passes K per run (>= 2)."""
    data: str | None = None
    """Candles to test on (embedded name or file); None: the first run's own data."""
    split: Literal["test", "validation", "all"] = "test"
    """Part of the data to test on."""
    checkpoint: Literal["best", "final"] = "best"
    """Which checkpoint of each run."""
    seed: int = 0
    """Seed of the sampled actions and the random passes."""
    out: Path | None = None
    """Output folder (None: the run directory, or the runs' common parent)."""
    keep_ledgers: bool = False
    """Also keep every pass's per-bar arrays and write them to ``ledgers.npz`` (memory and
    disk ~50 bytes x passes x bars; off: only streaming statistics are kept)."""
    pass_groups: int = 1
    """On a backend, split each run into this many tasks by passes (a very long test period)."""
    configs_tried: int = 1
    """Configurations tried before these runs (a search): multiplies the DSR's trials."""
    bars_per_year: float | None = None
    """Annualisation; None: from the frequency of the whole dataset the runs trained on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(Path(r) for r in self.runs))
        if not self.runs:
            raise ValueError("no finished runs to backtest.")
        if self.passes < 2:
            raise ValueError(
                f"--passes must be >= 2 (the verdict compares passes), got {self.passes}."
            )
        if not 1 <= self.pass_groups <= self.passes:
            raise ValueError(
                f"--pass-groups must be in [1, --passes={self.passes}], got {self.pass_groups}."
            )
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}.")
        if self.configs_tried < 1:
            raise ValueError(f"--configs-tried must be >= 1, got {self.configs_tried}.")
        if self.bars_per_year is not None and not self.bars_per_year > 0:
            raise ValueError(f"--bars-per-year must be > 0, got {self.bars_per_year}.")


def count_trials(runs: tuple[Path, ...], checkpoint: str, configs_tried: int = 1) -> int:
    """Trials behind the judged policies: configs x checkpoints x seeds looked at.

    Per run, the checkpoints looked at on the validation split to choose ``best.zip``
    (``selection.json``; 1 for ``final`` or a run without one); the runs of a sweep count
    all of its seeds (``sweep.json``'s ``trials``); times ``configs_tried``.
    """
    from experiments.train import read_selection

    per_run = []
    for run in runs:
        looked = int(read_selection(run).get("checkpoints_evaluated", 1) or 1)
        per_run.append(looked if checkpoint == "best" else 1)
    seeds = len(runs)
    for sweep in {r.resolve().parent for r in runs}:
        seeds = max(seeds, _sweep_seeds(sweep / "sweep.json"))
    checkpoints = max(per_run) if per_run else 1
    return int(configs_tried) * seeds * checkpoints


def _sweep_seeds(manifest: Path) -> int:
    """Seeds a sweep recorded as trials (0 when there is no readable ``sweep.json``)."""
    if not manifest.is_file():
        return 0
    try:
        doc = json.loads(manifest.read_text())
        return int(doc.get("trials", {}).get("seeds", 0) or 0)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
        return 0


def sample_of(request: BacktestRequest) -> Sample:
    """Which bars a request judges, how its checkpoints were chosen, and the trials."""
    return Sample(
        split=request.split,
        checkpoint=request.checkpoint,
        selected_on="validation" if request.checkpoint == "best" else None,
        n_trials=count_trials(request.runs, request.checkpoint, request.configs_tried),
    )


def dataset_bars_per_year(config: Any, data: str | None = None) -> float:
    """Bars per year from the frequency of the whole dataset (not the test span)."""
    from experiments.config import DataConfig

    cfg = (
        config.data
        if data is None
        else DataConfig(source=data, fractions=config.data.fractions, embargo=config.data.embargo)
    )
    return stats.infer_bars_per_year(load_market(cfg).index)


@dataclass(frozen=True)
class BacktestOutcome:
    """A finished backtest: the summary written to ``backtest.json``, and where."""

    summary: dict[str, Any]
    json_path: Path
    report_path: Path
    failed: dict[str, str] = field(default_factory=dict)  # run -> error (backend runs only)


def backtest_runs(
    request: BacktestRequest,
    backend: Backend | None = None,
    *,
    attempts: int = 2,
    show_progress: bool = True,
) -> BacktestOutcome | None:
    """Backtest ``request.runs`` together, judge them, write ``backtest.json`` + ``report.html``
    and print the verdict.

    Args:
        request: runs, passes, data, split, checkpoint, seed and output folder.
        backend: None runs in this process; a backend runs one task per run.
        attempts: tries per run on a backend.
        show_progress: draw progress.

    Returns:
        The outcome, or None when every run failed on the backend (nothing is written).
    """
    configs = [load_run_config(r) for r in request.runs]
    windows = {c.env.window for c in configs}
    if len(windows) > 1:
        raise ValueError(
            f"the runs use different env windows {sorted(windows)}; backtest runs "
            "of one experiment together."
        )
    failed: dict[Path, str] = {}
    sample = sample_of(request)
    bars_per_year = request.bars_per_year or dataset_bars_per_year(configs[0], request.data)
    if backend is None:
        result = _in_process(request, configs[0], show_progress, sample, bars_per_year)
    else:
        from experiments.sweeps.backtest import backtest_on

        result, failed = backtest_on(
            list(request.runs),
            backend,
            passes=request.passes,
            seed=request.seed,
            data=request.data,
            split=request.split,
            prefer=request.checkpoint,
            attempts=attempts,
            show_progress=show_progress,
            pass_groups=request.pass_groups,
            keep_ledgers=request.keep_ledgers,
            sample=sample,
            bars_per_year=bars_per_year,
        )
        if result is None:
            console.print("[red]every run failed; no report written.")
            return None
    summary = result.summary()
    summary["settings"].update(
        {
            "split": request.split,
            "data": request.data or configs[0].data.source,
            "checkpoint": request.checkpoint,
        }
    )
    if backend is not None:
        summary["settings"]["failed_runs"] = {str(k): v for k, v in failed.items()}
    out = request.out or default_out(list(request.runs))
    json_path, report_path = publish(summary, out)
    if request.keep_ledgers:
        console.print(f"ledgers: {escape(str(write_ledgers(result, out / 'ledgers.npz')))}")
    print_summary(summary, json_path, report_path)
    if failed:
        console.print(
            f"[red]{len(failed)} run(s) failed and are left out of the verdict: "
            + escape("; ".join(f"{k}: {v}" for k, v in failed.items()))
        )
    return BacktestOutcome(summary, json_path, report_path, {str(k): v for k, v in failed.items()})


def _in_process(
    request: BacktestRequest,
    config: Any,
    show_progress: bool,
    sample: Sample,
    bars_per_year: float,
) -> BacktestResult:
    candles = candles_to_test(config, request.data, request.split)
    policies = [load_policy(r, candles=candles, prefer=request.checkpoint)[0] for r in request.runs]
    names = [str(r) for r in request.runs]
    console.print(
        f"backtesting {len(policies)} run(s) x {request.passes} passes over "
        f"{len(candles):,} bars ({request.split} split)"
    )
    with console.status("running passes...") as status:
        return backtest(
            policies,
            candles,
            passes=request.passes,
            env_config=config.env,
            seed=request.seed,
            names=names,
            on_policy_done=lambda i, n: status.update(f"run {i + 1}/{len(names)} done: {n}"),
            keep_ledgers=request.keep_ledgers,
            sample=sample,
            bars_per_year=bars_per_year,
        )


def write_ledgers(result: BacktestResult, path: Path) -> Path:
    """Every kept per-bar array of a backtest (``keep_ledgers``) into one ``.npz`` file.

    Keys ``<group>/<field>``: groups ``seed<i>/stochastic``, ``seed<i>/deterministic``,
    ``seed<i>/random``, ``buy_and_hold``, ``flat``; fields ``positions``, ``log_returns``,
    ``costs``, ``mean``, ``sigma`` (``[passes, bars]``), plus ``times`` (ISO strings).
    """
    groups = {"buy_and_hold": result.buy_and_hold, "flat": result.flat}
    for i, s in enumerate(result.seeds):
        groups.update(
            {
                f"seed{i}/stochastic": s.stochastic,
                f"seed{i}/deterministic": s.deterministic,
                f"seed{i}/random": s.random,
            }
        )
    arrays: dict[str, np.ndarray] = {
        "times": np.array([t.isoformat() for t in result.times], dtype=str)
    }
    for name, group in groups.items():
        if group.ledgers is None:
            raise ValueError(f"{name}: the backtest did not keep ledgers (keep_ledgers=False).")
        for field_name in ("positions", "log_returns", "costs", "mean", "sigma"):
            arrays[f"{name}/{field_name}"] = getattr(group.ledgers, field_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def print_summary(
    summary: dict[str, Any], json_path: Path | None = None, report_path: Path | None = None
) -> None:
    """The verdict, its checks, a per-run table and where the files are, printed with rich."""
    v = summary["verdict"]
    colour = {"LEARNED": "green", "RANDOM": "red"}.get(v["label"], "yellow")
    if v.get("in_sample"):
        console.print(
            "\n[bold yellow]IN-SAMPLE[/]: " + escape(v["explanation"].splitlines()[0])
        )
    console.print(f"\nverdict: [bold {colour}]{v['label']}[/]  {escape(v['explanation'])}")
    checks = Table(title="checks")
    for col in ("check", "statistic", "p-value", "threshold", "pass"):
        checks.add_column(col)
    for c in v["checks"].values():
        checks.add_row(
            escape(c["name"]),
            _f(c["statistic"]),
            _f(c["p_value"]),
            _f(c["threshold"]),
            "yes" if c["passed"] else "no",
        )
    console.print(checks)
    table = Table(title="per run (log returns over the test period)")
    for col in ("run", "total", "sharpe", "max dd", "turnover", "psr"):
        table.add_column(col)
    for row in summary["metrics"]["rows"]:
        m = row["metrics"]
        table.add_row(
            escape(row["name"]),
            _f(m["total_log_return"]),
            _f(m["sharpe"]),
            _f(m["max_drawdown"]),
            _f(m["turnover"]),
            _f(m["psr"]),
        )
    console.print(table)
    for what, path in (("backtest", json_path), ("report", report_path)):
        if path is not None:
            console.print(f"{what}: [bold]{escape(str(path))}[/bold]")


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def seed_means(doc: dict[str, Any]) -> np.ndarray:
    """Mean total log return of the stochastic passes, one per run: ``[n_runs]``."""
    return np.array([np.mean(p) for p in doc["pass_totals"]["policy"]], dtype=np.float64)


def compare_backtests(
    paths: list[Path], comparisons: int | None = None
) -> dict[tuple[str, str], float]:
    """Print the IQM (95% CI) of each set and the probability of improvement of each pair.

    With ``n`` sets every pair is compared: ``n (n - 1) / 2`` comparisons, and the largest
    of many ``P(A > B)`` looks better than it is, so each pair's CI is a simultaneous
    (Bonferroni) interval at ``1 - 0.05 / comparisons`` and the number of comparisons is
    printed with it.

    Args:
        paths: ``backtest.json`` of two or more sets.
        comparisons: how many comparisons were made in all, when more were made than the
            pairs here (e.g. earlier calls); None: the pairs here.

    Returns:
        ``P(A > B)`` for each pair ``(A, B)`` in the order given.

    Raises:
        ValueError: fewer than two sets, or ``comparisons`` below the pairs compared here.
    """
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two backtests; got {len(paths)}.")
    pairs = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths))]
    total = len(pairs) if comparisons is None else comparisons
    if total < len(pairs):
        raise ValueError(
            f"--comparisons must be at least the {len(pairs)} pair(s) compared here; "
            f"got {comparisons}."
        )
    docs = [read_json(p) for p in paths]
    means = []
    for path, doc in zip(paths, docs, strict=True):
        try:
            means.append(seed_means(doc))
        except (KeyError, IndexError, TypeError) as err:  # valid JSON, damaged inside
            raise ValueError(
                f"{path}: damaged backtest.json ({type(err).__name__}: {err}); re-run "
                "`mlkv-trader backtest` to write it again."
            ) from err
    table = Table(title="per-run mean pass log return")
    for col in ("set", "runs", "IQM", "95% CI", "trials", "sample"):
        table.add_column(col)
    for path, doc, x in zip(paths, docs, means, strict=True):
        if x.size > 1:
            iqm, lo, hi = stats.iqm_ci(x, rng=0)
            ci = f"{lo:+.4f} .. {hi:+.4f}"
        else:
            iqm, ci = float(x[0]), "- (one run)"
        settings = doc.get("settings", {})
        in_sample = doc.get("verdict", {}).get("in_sample")
        sample = f"IN-SAMPLE ({settings.get('split')})" if in_sample else settings.get("split", "?")
        table.add_row(
            escape(str(path)), str(x.size), f"{iqm:+.4f}", ci,
            str(settings.get("n_trials", "?")), escape(str(sample)),
        )
    console.print(table)
    level = 0.05 / total
    out = {}
    for i, j in pairs:
        a, b = str(paths[i]), str(paths[j])
        p, lo, hi = stats.probability_of_improvement_ci(
            means[i], means[j], confidence=1.0 - level, rng=0
        )
        out[(a, b)] = p
        console.print(
            f"P({escape(a)} > {escape(b)}) = {p:.3f}  ({100 * (1 - level):.4g}% CI "
            f"{lo:.3f} .. {hi:.3f})"
        )
    console.print(
        f"{total} comparison(s) made; each CI has {100 * (1 - level):.4g}% coverage "
        f"(Bonferroni: 0.05/{total})"
        + ("" if total > 1 else "; pass --comparisons N when this pair is one of N compared")
    )
    return out
