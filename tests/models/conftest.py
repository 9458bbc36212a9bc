"""Fixtures for the models tests: one CPU thread, and encoders with sharp random weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch

from models import EncoderConfig, KVSharingPlan, MLKVEncoder


@pytest.fixture(autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(enc: MLKVEncoder, seed: int = 0) -> MLKVEncoder:
    """Variance-preserving random weights (std 1/sqrt(fan_in)) and noisy norms and biases.

    The encoder's own GPT-2 init (std 0.02) makes attention almost uniform, so a bar far
    back in the receptive field moves the output by ~1e-5: too little for a test to tell
    "depends on it" from float rounding. These weights make every dependency visible.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return enc


@pytest.fixture
def make_encoder() -> Callable[..., MLKVEncoder]:
    """``make_encoder(plan, window, d_model=32, n_features=5, **cfg)`` in eval mode."""

    def make(
        plan: KVSharingPlan, window: int, d_model: int = 32, n_features: int = 5, **cfg
    ) -> MLKVEncoder:
        torch.manual_seed(0)
        enc = MLKVEncoder(EncoderConfig(n_features, d_model, plan, window, **cfg))
        return randomize(enc).eval()

    return make
