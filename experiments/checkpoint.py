"""Checkpoints as zip archives of tensors, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds named entries, each a tree of dicts/lists/tensors/numbers/strings
(``policy`` state dict, ``optimizer`` state dict, ``state`` such as step counters and RNG
states), plus ``meta.json``. It is written to a temporary file in the same directory and
renamed into place, so a crash never leaves a half-written checkpoint. Nothing is unpickled
beyond what ``weights_only=True`` allows, so a foreign file cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.errors import WriteError

FORMAT = "mlkv-trader-checkpoint"
VERSION = 1
TMP_SUFFIX = ".tmp"  # write_atomic's temporary files: ``.<name>.<random>.tmp``


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, or not an mlkv-trader checkpoint."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename (never half-written).

    The file gets the permissions a plain ``open(path, "w")`` would give (0644 under the
    usual umask, not ``mkstemp``'s 0600), and the directory is fsynced after the rename so
    the new name survives a power cut.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            kept = "the file already there is unchanged" if path.exists() else "nothing written"
            raise WriteError(
                f"cannot write {path}: {err.strerror or err} ({kept}). Free disk space or make "
                "the folder writable, then run the command again."
            ) from err
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a killed :func:`write_atomic` left in ``directory``.

    Only call it while no other process writes there (a run holds its lock). Returns them.
    """
    stale = sorted(Path(directory).glob(f".*{TMP_SUFFIX}"))
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


def _umask() -> int:
    mask = os.umask(0o022)  # read it (there is no getter) and put it back
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, entries: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Save ``entries`` (name -> tensor tree) and JSON ``meta`` atomically to ``path``."""
    path = Path(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", json.dumps({"format": FORMAT, "version": VERSION, **meta}))
        for name, tree in entries.items():
            blob = io.BytesIO()
            torch.save(to_tensors(tree), blob)
            zf.writestr(f"{name}.pt", blob.getvalue())
    write_atomic(path, buf.getvalue())
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(entries, meta)`` from a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing file, not a zip, not our format, or a corrupted entry; the
            message names the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "meta.json" not in names:
                raise CheckpointError(
                    f"{path}: not an mlkv-trader checkpoint (no meta.json). Checkpoints come "
                    "from `mlkv-trader train`; an SB3 model.zip cannot be loaded here."
                )
            meta = json.loads(zf.read("meta.json"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: meta.json does not describe an mlkv-trader checkpoint."
                )
            if meta.get("version", 0) > VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint version {meta['version']} is newer "
                    f"than this mlkv-trader ({VERSION}); upgrade the package."
                )
            entries = {}
            for name in names:
                if name.endswith(".pt"):
                    blob = io.BytesIO(zf.read(name))
                    tree = torch.load(blob, weights_only=True, map_location=map_location)
                    entries[name[:-3]] = tree
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        json.JSONDecodeError,
        UnicodeDecodeError,
        EOFError,
        RuntimeError,
        KeyError,
        OSError,
        zlib.error,
    ) as err:
        raise CheckpointError(
            f"{path}: corrupted checkpoint ({_first_line(err)}). Use an earlier "
            "checkpoint from the run's checkpoints/ folder."
        ) from err
    except Exception as err:  # e.g. pickle.UnpicklingError from a foreign payload
        raise CheckpointError(f"{path}: cannot be loaded safely ({_first_line(err)}).") from err

    return entries, meta


def _first_line(err: BaseException) -> str:
    """``Type: first line`` of an exception (torch's unpickling errors run to many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def to_tensors(tree: Any) -> Any:
    """Numpy arrays -> tensors (recursively), so ``weights_only`` loading accepts the tree."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(tree))
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_tensors(v) for v in tree)
    return tree


def to_numpy(tree: Any) -> Any:
    """Tensors -> numpy arrays (recursively): the inverse of :func:`to_tensors`."""
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_numpy(v) for v in tree)
    return tree
