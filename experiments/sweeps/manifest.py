"""A sweep directory and its manifest: many seeds of one experiment.

Layout (whatever the backend)::

    runs/<name>/sweep-<UTC timestamp>/
        sweep.json      manifest: seeds, status, attempts, errors, run directories
        config.yaml     the base config (each run's own config.yaml has its seed)
        command.txt     every command that started or resumed the sweep
        seed-0/         an ordinary run directory (config.yaml, checkpoints/, final.zip, ...)
        seed-1/
        ...

The manifest is rewritten atomically on every status change, so a killed driver leaves a
readable one. Run directories in it are relative to the sweep and may not leave it.

This module imports nothing heavy at the top: worker processes unpickle the sweep's task
functions before they pin their thread counts.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from experiments.errors import SweepError
from experiments.progress import console

if TYPE_CHECKING:
    from experiments.config import TrainConfig

FORMAT = "mlkv-trader-sweep"
VERSION = 1
MANIFEST = "sweep.json"
STATUSES = ("pending", "running", "done", "failed")


def _check_inside(manifest: Path, run_dir: str) -> None:
    """A manifest's run directory must be a plain relative path inside the sweep."""
    parts = Path(run_dir).parts
    if not run_dir or Path(run_dir).is_absolute() or ".." in parts or run_dir.startswith("~"):
        raise SweepError(
            f"{manifest}: run_dir {run_dir!r} leaves the sweep directory; run directories in "
            "a manifest are relative to it (e.g. 'seed-0'). Fix or restore the manifest."
        )


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
        """Make ``runs_root/<name>/sweep-<timestamp>/`` with one run directory per seed.

        Raises:
            ValueError: the data source names nothing (checked before any directory exists).
        """
        from experiments.checkpoint import write_atomic
        from experiments.config import config_to_yaml
        from experiments.factory import check_source

        check_source(config.data)

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
        try:
            write_atomic(path / "config.yaml", config_to_yaml(config).encode())
            sweep = cls(path=path, name=config.name, created=_now())
            sweep.add_seeds(seeds)
        except BaseException:  # no half-made sweep left behind
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            raise
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
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SweepError(f"{manifest}: not valid JSON ({err}).") from err
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or doc.get("version", 0) > VERSION
        ):
            raise SweepError(f"{manifest}: not a sweep manifest this mlkv-trader can read.")
        try:
            records = {int(r["seed"]): SeedRecord(**r) for r in doc["seeds"]}
            sweep = cls(path, doc["name"], doc["created"], records, doc.get("backend", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise SweepError(
                f"{manifest}: damaged manifest ({type(err).__name__}: {err})."
            ) from err
        for rec in records.values():
            _check_inside(manifest, rec.run_dir)
        return sweep

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
            # trials behind any choice among this sweep's runs (for the Deflated Sharpe)
            "trials": {"configs": 1, "seeds": len(self.records)},
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
