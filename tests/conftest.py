"""Shared pytest configuration: CUDA tests skip cleanly when no GPU is present; a counter of
device-to-host transfers for the tests of the CUDA path."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none available)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


#: tensor methods that copy device memory to the host (``numpy``/``__array__`` count only
#: when not applied to the result of a counted ``cpu()``: on a GPU they need one first)
TO_HOST = {"cpu", "item", "tolist", "__float__", "__int__", "__bool__", "__index__"}


class HostTransfers(TorchFunctionMode):
    """Counts device-to-host transfers (on the CPU: the calls that would be one on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._on_host: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        out = func(*args, **(kwargs or {}))
        to_cpu = name == "to" and any(
            str(a) == "cpu" for a in (*args[1:], *(kwargs or {}).values())
        )
        if name in TO_HOST or to_cpu:
            self.count += 1
            if isinstance(out, torch.Tensor):
                self._on_host.add(id(out))
        elif name in ("numpy", "__array__") and id(args[0]) not in self._on_host:
            self.count += 1
        return out


@pytest.fixture
def host_transfers() -> type[HostTransfers]:
    """:class:`HostTransfers`: ``with host_transfers() as t: ...; t.count``."""
    return HostTransfers
