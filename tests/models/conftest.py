"""Fixtures for the models tests: one CPU thread, and encoders with sharp random weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch

from models import EncoderConfig, KVSharingPlan, MLKVEncoder, ProductKeyMemory


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


def brute_force_memory(
    mem: ProductKeyMemory, x: torch.Tensor, k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference product-key memory: all ``n_keys ** 2`` full keys built and scored explicitly.

    Product key ``i * n + j`` is ``concat(K1[i], K2[j])``; its score is one dot product with
    the whole query (not the two half scores the module adds), the top-k comes from sorting
    all scores, and the output is an explicit weighted sum of value rows.

    Args:
        x: ``[M, D]`` (use float64: the two ways of summing a score differ in rounding).
        k: slots read per head; default ``mem.config.k`` (tests pass another to break it).

    Returns:
        ``(out [M, D], weights [M, H, k], index [M, H, k])``, best first.
    """
    c = mem.config
    H, n, half, k = c.heads, c.n_keys, c.k_dim // 2, c.k if k is None else k
    q = mem.query_norm(mem.query(x)).view(x.shape[0], H, 2 * half)  # [M, H, kd]
    k1 = mem.keys[:, 0][:, :, None].expand(H, n, n, half)  # [H, n, n, kd/2]: K1[i]
    k2 = mem.keys[:, 1][:, None, :].expand(H, n, n, half)  # [H, n, n, kd/2]: K2[j]
    full = torch.cat((k1, k2), dim=-1).reshape(H, n * n, 2 * half)  # [H, n^2, kd]
    scores = torch.einsum("mhd,hsd->mhs", q, full)  # [M, H, n^2]
    order = scores.argsort(dim=-1, descending=True)[..., :k]  # [M, H, k]
    weights = torch.softmax(scores.gather(-1, order), dim=-1)  # [M, H, k]
    rows = mem.values.weight[order]  # [M, H, k, value_dim]
    out = (weights[..., None] * rows).sum(dim=(1, 2))  # [M, value_dim]
    if mem.out_proj is not None:
        out = mem.out_proj(out)
    return out, weights, order


@pytest.fixture(name="brute_force_memory")
def brute_force_memory_fixture() -> Callable[..., tuple[torch.Tensor, ...]]:
    """:func:`brute_force_memory` for test modules (they cannot import the conftest)."""
    return brute_force_memory
