"""Errors that are the user's to fix. The CLI prints them as one line and exits 2.

Every message says what is wrong, where (file, key, step) and how to fix it, so no
traceback is needed (``MLKV_TRADER_TRACEBACK=1`` shows one anyway). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command line that cannot run as given (conflicting or missing flags)."""


class TrainingDivergedError(RuntimeError):
    """NaN or inf in the loss, the weights or the observations; names the step."""


class SweepError(RuntimeError):
    """A sweep cannot start or continue: bad seeds, not a sweep directory, busy, ..."""


class BackendError(RuntimeError):
    """A backend cannot start (Ray missing or unreachable, bad worker counts)."""


class WriteError(OSError):
    """A file cannot be written (read-only folder, full disk, quota); names the file and
    says that the file already there, if any, is unchanged."""


class RunBusyError(RuntimeError):
    """Another process is training in the same run directory."""


#: What the CLI reports without a traceback (config, data and checkpoint errors are
#: ValueErrors: ``ConfigError``, ``CandleDataError``, ``CheckpointError``).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    TrainingDivergedError,
    SweepError,
    BackendError,
    WriteError,
    RunBusyError,
)
