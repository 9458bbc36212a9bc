"""Shared fixtures for the agent tests: tiny encoders, small spaces, one torch thread.

Tiny models on a shared 2-core machine run ~10x faster on one torch thread than on two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(before)


@pytest.fixture
def tiny_encoder() -> dict[str, Any]:
    """3 layers, 2 query heads, 1 KV head, 2 KV layers, window 4: receptive field 7 bars."""
    return {
        "d_model": 16,
        "window": 4,
        "plan": {"kind": "mlkv", "n_layers": 3, "n_heads": 2, "n_kv_heads": 1, "n_kv_layers": 2},
    }


@pytest.fixture
def dict_space() -> Callable[..., spaces.Dict]:
    """Factory of market-replay observation spaces ``Dict(candles=[T, F], account=[A])``."""

    def make(T: int = 8, F: int = 3, A: int = 2) -> spaces.Dict:
        return spaces.Dict(
            candles=spaces.Box(-np.inf, np.inf, (T, F), np.float32),
            account=spaces.Box(-np.inf, np.inf, (A,), np.float32),
        )

    return make
