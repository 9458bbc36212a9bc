"""Where the tasks of a sweep run: a local pool of processes, or Ray tasks on a cluster.

A task is a module-level function and its (picklable) arguments. Both backends run it
through :func:`run_guarded`, which pins the number of torch/numba threads to the task's
CPUs (so a seed gives the same weights on either backend) and turns an exception into an
error text. The scheduler :func:`run_tasks` keeps ``backend.slots`` tasks in flight and
retries a failed task before giving up on it; it knows nothing about training.

- :class:`LocalBackend` starts one fresh ``spawn`` process per task attempt, at most
  ``workers`` at once. A worker that dies (killed, out of memory, segfault) is reported
  with its exit code and cannot take other tasks down with it. It needs no Ray.
- :class:`RayBackend` submits one Ray task per attempt with declared resources
  (``num_cpus``, ``num_gpus``), on a local Ray instance or on the cluster at ``address``.
  Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from experiments.errors import BackendError

BACKENDS = ("local", "ray")
RAY_INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9,<3")'


@dataclass(frozen=True)
class Resources:
    """What one task needs; Ray reserves it, the local pool sizes itself by it."""

    cpus: int = 1
    """CPU cores per task; also the number of torch/numba threads the task uses."""
    gpus: float = 0.0
    """GPUs per task (fractions pack several tasks on one GPU); 0 for CPU-only."""

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"cpus per task must be >= 1, got {self.cpus}")
        if self.gpus < 0:
            raise ValueError(f"gpus per task must be >= 0, got {self.gpus}")


@dataclass(frozen=True)
class Outcome:
    """How one task attempt ended: its return value, or an error text."""

    key: Hashable
    value: Any = None
    error: str | None = None
    """``"Type: message"`` of the failure; None when the task succeeded."""
    details: str | None = None
    """The full traceback (or the worker's fate) behind ``error``."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend(Protocol):
    """What :func:`run_tasks` needs from a place to run tasks."""

    name: str
    slots: int  # how many tasks to keep in flight at once

    def submit(self, key: Hashable, fn: Callable[..., Any], args: tuple) -> None:
        """Start one attempt of ``fn(*args)``, reported later under ``key``."""

    def wait(self, timeout: float) -> list[Outcome]:
        """The attempts that ended within ``timeout`` seconds (possibly none)."""

    def cancel(self, grace: float) -> list[Hashable]:
        """Interrupt the running attempts (they may checkpoint within ``grace`` seconds)."""

    def close(self) -> None:
        """Release the workers (and the Ray instance this backend started)."""


def limit_threads(cpus: int) -> None:
    """Make this process use ``cpus`` threads in torch, numba and BLAS.

    The thread count changes float reductions, so pinning it is what makes a seed's
    weights identical whichever backend or machine size ran it.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cpus)
    import numba
    import torch

    torch.set_num_threads(cpus)
    numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))


def run_guarded(fn: Callable[..., Any], args: tuple, cpus: int) -> tuple[str, Any, str | None]:
    """Run ``fn(*args)`` with ``cpus`` threads; ``("ok", value, None)`` or ``("error", text, tb)``.

    Errors travel as text, not exceptions, so that they read the same from either backend
    and an exception type the driver cannot unpickle cannot hide the failure.
    """
    try:
        limit_threads(cpus)
        return ("ok", fn(*args), None)
    except BaseException as err:  # KeyboardInterrupt too: the attempt ended unfinished
        return ("error", error_text(err), "".join(traceback.format_exception(err)))


def error_text(err: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception."""
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


def _detach_from_terminal() -> None:
    """Own process group: a terminal's Ctrl-C reaches only the driver, which then sends each
    worker exactly one SIGINT (a second one could cut its checkpoint short). On Linux the
    worker also gets a SIGINT if the driver dies, so it checkpoints instead of running on."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the driver ignores it
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


def _child(conn: Connection, fn: Callable[..., Any], args: tuple, cpus: int, env: dict) -> None:
    _detach_from_terminal()
    os.environ.update(env)
    result = run_guarded(fn, args, cpus)
    try:
        conn.send(result)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the driver is gone; the task checkpointed on its SIGINT
    except Exception as err:  # a result that cannot be pickled
        conn.send(("error", f"cannot send the result back: {error_text(err)}", None))
    finally:
        conn.close()


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA devices visible here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class _Running:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    slot: int


class LocalBackend:
    """One fresh process per task attempt, at most ``workers`` at once, on this machine.

    Args:
        workers: processes at once; default: the CPU cores divided by ``resources.cpus``
            (and, for GPU tasks, the GPUs times the tasks each GPU holds).
        resources: per-task CPUs (threads) and GPUs. A GPU task gets
            ``CUDA_VISIBLE_DEVICES`` set to one device, round-robin over the worker slots.
    """

    name = "local"

    def __init__(self, workers: int | None = None, resources: Resources = Resources()) -> None:
        self.resources = resources
        self._n_gpus = gpu_count() if resources.gpus > 0 else 0
        if resources.gpus > 0 and self._n_gpus == 0:
            raise BackendError(
                "the config asks for a GPU (device: cuda) but this machine has none visible; "
                "set device: cpu, or run with --backend ray on a cluster with GPUs."
            )
        if workers is None:
            workers = max(1, available_cpus() // resources.cpus)
            if resources.gpus > 0:
                per_gpu = max(1, int(1 // resources.gpus))
                workers = min(workers, self._n_gpus * per_gpu)
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.slots = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._running: dict[Hashable, _Running] = {}

    def submit(self, key: Hashable, fn: Callable[..., Any], args: tuple) -> None:
        used = {r.slot for r in self._running.values()}
        slot = min(set(range(self.slots + len(used))) - used)
        env = {}
        if self.resources.gpus > 0:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self._n_gpus)
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_child,
            args=(send, fn, args, self.resources.cpus, env),
            name=f"mlkv-task-{key}",
            daemon=False,
        )
        process.start()
        send.close()  # the child holds the only writer: EOF means it died without a word
        self._running[key] = _Running(process, receive, slot)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._running:
            time.sleep(timeout)
            return []
        waitables = [r.conn for r in self._running.values()]
        waitables += [r.process.sentinel for r in self._running.values()]
        ready = set(wait(waitables, timeout))
        outcomes = []
        for key, run in list(self._running.items()):
            if run.conn not in ready and run.process.sentinel not in ready:
                continue
            outcome = self._collect(key, run)
            if outcome is not None:
                outcomes.append(outcome)
                del self._running[key]
        return outcomes

    def _collect(self, key: Hashable, run: _Running) -> Outcome | None:
        try:
            status, value, details = run.conn.recv()
        except EOFError:  # the process ended without sending: killed or crashed
            run.process.join(5)
            code = run.process.exitcode
            if code is None:
                return None
            run.conn.close()
            return Outcome(key, error=_exit_text(code), details=_exit_text(code))
        run.conn.close()
        run.process.join()
        if status == "ok":
            return Outcome(key, value=value)
        return Outcome(key, error=value, details=details)

    def cancel(self, grace: float) -> list[Hashable]:
        keys = list(self._running)
        for run in self._running.values():
            if run.process.is_alive() and run.process.pid is not None:
                os.kill(run.process.pid, signal.SIGINT)  # train() checkpoints on Ctrl-C
        deadline = time.monotonic() + grace
        for run in self._running.values():
            run.process.join(max(0.0, deadline - time.monotonic()))
            if run.process.is_alive():
                run.process.terminate()
                run.process.join(5)
            run.conn.close()
        self._running.clear()
        return keys

    def close(self) -> None:
        if self._running:
            self.cancel(grace=0.0)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"WorkerDied: the worker process was killed by {name}{hint}"
    return f"WorkerDied: the worker process exited with code {code} before reporting a result"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`BackendError` that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise BackendError(
            f"--backend ray needs Ray, which is not installed in {sys.prefix}. "
            f"Install it with: {RAY_INSTALL}. The local backend (--backend local) needs no Ray."
        ) from err
    return ray


class RayBackend:
    """One Ray task per attempt, with ``num_cpus``/``num_gpus`` declared.

    Args:
        address: a running cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None
            starts a local Ray instance (``workers * cpus`` CPUs, or all of them).
        workers: tasks in flight at once; default: what the cluster's CPUs (and GPUs) hold
            right now. Give more on an autoscaling cluster: queued tasks make it grow.
        resources: per-task CPUs and GPUs that Ray reserves.

    Raises:
        BackendError: Ray is not installed, or the cluster cannot be reached.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        resources: Resources = Resources(),
    ) -> None:
        ray = self._ray = import_ray()
        self.resources = resources
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
            if address is not None:
                kwargs = {"address": address, "logging_level": "WARNING"}
            elif workers is not None:
                kwargs["num_cpus"] = workers * resources.cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise BackendError(
                    f"cannot start or join {where}: {error_text(err)}. Is `ray start --head` "
                    "running there, with the same Ray and Python versions as here?"
                ) from err
            self._owns = True
        if workers is None:
            total = ray.cluster_resources()
            workers = max(1, int(total.get("CPU", 1) // resources.cpus))
            if resources.gpus > 0:
                workers = min(workers, max(1, int(total.get("GPU", 0) // resources.gpus)))
        self.slots = workers
        self._task = ray.remote(run_guarded)
        self._options = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "max_retries": 0}
        self._refs: dict[Any, Hashable] = {}

    def submit(self, key: Hashable, fn: Callable[..., Any], args: tuple) -> None:
        task = self._task.options(**self._options, name=f"mlkv-task-{key}")
        ref = task.remote(fn, args, self.resources.cpus)
        self._refs[ref] = key

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            time.sleep(timeout)
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        outcomes = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                status, value, details = self._ray.get(ref)
            except Exception as err:  # the worker or its node died, or the task was cancelled
                outcomes.append(Outcome(key, error=error_text(err), details=str(err)))
                continue
            if status == "ok":
                outcomes.append(Outcome(key, value=value))
            else:
                outcomes.append(Outcome(key, error=value, details=details))
        return outcomes

    def cancel(self, grace: float) -> list[Hashable]:
        keys = list(self._refs.values())
        for ref in self._refs:
            self._ray.cancel(ref)  # KeyboardInterrupt in the task: train() checkpoints
        if self._refs:
            self._ray.wait(list(self._refs), num_returns=len(self._refs), timeout=grace)
        self._refs.clear()
        return keys

    def close(self) -> None:
        if self._refs:
            self.cancel(grace=0.0)
        if self._owns:
            self._ray.shutdown()


def make_backend(
    name: str,
    *,
    workers: int | None = None,
    address: str | None = None,
    resources: Resources = Resources(),
) -> Backend:
    """The backend called ``name`` (``local`` or ``ray``).

    Raises:
        BackendError: an unknown name, ``address`` without Ray, or Ray missing.
    """
    if name not in BACKENDS:
        raise BackendError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}.")
    if name == "local":
        if address is not None:
            raise BackendError("--ray-address needs --backend ray.")
        return LocalBackend(workers, resources)
    return RayBackend(address, workers, resources)


class TaskListener:
    """What :func:`run_tasks` tells as tasks move; subclasses override what they act on."""

    def started(self, key: Hashable, attempt: int) -> None:
        """Attempt number ``attempt`` (1-based) of ``key`` was submitted."""

    def retrying(self, key: Hashable, outcome: Outcome) -> None:
        """An attempt of ``key`` failed and will be started again."""

    def finished(self, key: Hashable, outcome: Outcome, attempts: int) -> None:
        """``key`` ended for good (succeeded, or failed ``attempts`` times)."""

    def tick(self) -> None:
        """Called every poll interval: refresh displays here."""


def run_tasks(
    tasks: Mapping[Hashable, tuple[Callable[..., Any], tuple]],
    backend: Backend,
    *,
    attempts: int = 2,
    listener: TaskListener | None = None,
    poll: float = 0.5,
    grace: float = 60.0,
) -> dict[Hashable, Outcome]:
    """Run every task on ``backend``, each up to ``attempts`` times, ``backend.slots`` at once.

    A failed attempt is started again (before tasks not yet started, so that a resumable
    task picks up its checkpoint soon); after ``attempts`` failures the task's last outcome
    is final. One task failing never stops the others.

    Args:
        tasks: key -> (module-level function, arguments), in the order to start them.
        backend: where to run them.
        attempts: tries per task (2 = one retry).
        listener: told about starts, retries, final outcomes, and every ``poll`` seconds.
        poll: seconds between checks.
        grace: on Ctrl-C, seconds the running tasks get to checkpoint before being stopped.

    Returns:
        key -> final outcome, for every task.

    Raises:
        KeyboardInterrupt: after interrupting the running attempts (any other exception
            raised here stops them at once).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    listener = listener if listener is not None else TaskListener()
    queue = deque(tasks)
    tries: dict[Hashable, int] = dict.fromkeys(tasks, 0)
    in_flight: set[Hashable] = set()
    results: dict[Hashable, Outcome] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < backend.slots:
                key = queue.popleft()
                tries[key] += 1
                listener.started(key, tries[key])
                fn, args = tasks[key]
                backend.submit(key, fn, args)
                in_flight.add(key)
            for outcome in backend.wait(poll):
                key = outcome.key
                in_flight.discard(key)
                if not outcome.ok and tries[key] < attempts:
                    listener.retrying(key, outcome)
                    queue.appendleft(key)
                    continue
                results[key] = outcome
                listener.finished(key, outcome, tries[key])
            listener.tick()
    except BaseException as err:  # Ctrl-C (tasks may checkpoint), or a bug here: stop them
        backend.cancel(grace if isinstance(err, KeyboardInterrupt) else 0.0)
        raise
    return results
