"""ProductKeyMemory: exact product-key search, sparse gradients, usage statistics, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import PKMConfig, ProductKeyMemory, product_key_topk


def sharp(mem: ProductKeyMemory, seed: int = 0) -> ProductKeyMemory:
    """Random weights with spread-out scores (so top-k choices and weights are clear-cut)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mem.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mem


def brute_topk(s1: torch.Tensor, s2: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over all ``n * n`` sums ``s1[i] + s2[j]`` (index ``i * n + j``)."""
    every = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # [..., n*n]
    return every.topk(k, dim=-1)


# ---------------------------------------------------------------- the search
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    data=st.data(),
    lead=st.sampled_from([(), (5,), (3, 4)]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_product_key_topk_equals_brute_force_over_all_pairs(n, data, lead, dtype, seed):
    k = data.draw(st.integers(1, n))
    g = torch.Generator().manual_seed(seed)
    s1 = torch.randn(*lead, n, generator=g, dtype=dtype)
    s2 = torch.randn(*lead, n, generator=g, dtype=dtype)
    scores, index = product_key_topk(s1, s2, k)
    want_scores, want_index = brute_topk(s1, s2, k)
    assert torch.equal(index, want_index)  # exact indices, same order
    assert torch.equal(scores, want_scores)  # bit-identical scores, hence weights
    assert torch.equal(torch.softmax(scores, -1), torch.softmax(want_scores, -1))


def test_the_exactness_check_catches_a_search_with_too_few_candidates():
    g = torch.Generator().manual_seed(0)
    s1, s2 = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    k = 8
    _, want = brute_topk(s1, s2, k)
    _, approx = product_key_topk(s1, s2, k, candidates=3)  # top-3 per half: 9 pairs >= k
    missed = (approx.sort(-1).values != want.sort(-1).values).any(-1)  # [200]
    assert missed.float().mean() > 0.5  # most queries lose some true top-k pair
    _, exact = product_key_topk(s1, s2, k, candidates=k)
    assert torch.equal(exact, want)


@pytest.mark.parametrize(
    ("heads", "n_keys", "k", "k_dim", "value_dim", "query_norm"),
    [
        (1, 6, 3, 4, None, "layer"),
        (2, 8, 4, 8, None, "layer"),
        (3, 5, 5, 6, 7, "layer"),  # k = n_keys, value_dim != d_model: output projection
        (2, 7, 1, 4, 12, "none"),
    ],
)
@torch.inference_mode()
def test_memory_equals_brute_force_over_every_product_key(
    brute_force_memory, heads, n_keys, k, k_dim, value_dim, query_norm
):
    torch.manual_seed(0)
    mem = ProductKeyMemory(12, n_keys, k, heads, value_dim, k_dim=k_dim, query_norm=query_norm)
    mem = sharp(mem).double()
    x = torch.randn(64, 12, dtype=torch.float64)
    out, w_ref, i_ref = brute_force_memory(mem, x)
    weights, index = mem.lookup(x)  # [64, H, k] each
    assert torch.equal(index, i_ref)  # the same slots, best first
    torch.testing.assert_close(weights, w_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(mem(x), out, atol=1e-12, rtol=0)
    torch.testing.assert_close(mem(x.view(4, 16, 12)), out.view(4, 16, -1), atol=1e-12, rtol=0)
    # and the comparison can fail: reading the slots with the weights of the wrong order
    y = mem.values(index.flatten(1), per_sample_weights=weights.flip(-1).flatten(1))
    y = y if mem.out_proj is None else mem.out_proj(y)
    if k > 1:
        assert (y - out).abs().max() > 1e-6


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_gradients_reach_only_the_selected_values(sparse_grad):
    torch.manual_seed(0)
    n, k, H = 16, 3, 2
    mem = sharp(ProductKeyMemory(8, n, k, H, None, k_dim=8, sparse_grad=sparse_grad))
    x = torch.randn(5, 8)
    mem(x).mul(torch.randn(5, 8)).sum().backward()
    _, index = mem.lookup(x)  # [5, H, k]
    selected = torch.zeros(n * n, dtype=torch.bool)
    selected[index.flatten()] = True
    grad = mem.values.weight.grad
    assert grad.is_sparse == sparse_grad
    touched = grad.to_dense().abs().sum(-1) > 0  # [n^2] value rows with a gradient
    assert torch.equal(touched, selected)
    assert selected.sum() <= 5 * H * k < n * n  # sparse: far fewer than all slots
    # sub-keys: only those of the selected pairs (i of half 1, j of half 2) get a gradient
    for h in range(H):
        for half, sub in ((0, index[:, h] // n), (1, index[:, h] % n)):
            want = torch.zeros(n, dtype=torch.bool)
            want[sub.flatten()] = True
            assert torch.equal(mem.keys.grad[h, half].abs().sum(-1) > 0, want)
    for name, p in mem.named_parameters():  # the query network learns too
        if name.startswith("query"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- usage statistics
@torch.no_grad()
def test_usage_counts_every_read_and_resets():
    torch.manual_seed(0)
    mem = sharp(ProductKeyMemory(8, 6, 2, 2, None, k_dim=4))
    x = torch.randn(3, 10, 8)
    mem(x)
    _, index = mem.lookup(x)
    counts = np.bincount(index.flatten().numpy(), minlength=36)
    assert torch.equal(mem.reads, torch.from_numpy(counts))
    usage = mem.memory_usage()
    p = counts[counts > 0] / counts.sum()
    assert usage.reads == 3 * 10 * 2 * 2
    assert usage.slot_share == pytest.approx((counts > 0).mean())
    assert usage.read_entropy == pytest.approx(-(p * np.log(p)).sum())
    assert usage.read_entropy_ratio == pytest.approx(usage.read_entropy / math.log(36))
    assert mem.memory_usage(reset=True) == usage
    assert mem.memory_usage().reads == 0 and mem.reads.sum() == 0
    assert "reads" not in mem.state_dict()  # counters are not weights
    mem.track_usage = False
    mem(x)
    assert mem.reads.sum() == 0


@torch.no_grad()
def test_usage_of_a_collapsed_memory_is_low():
    torch.manual_seed(0)
    n, k = 10, 4
    mem = ProductKeyMemory(8, n, k, 1, None, k_dim=8)  # PKM's own init
    mem(torch.randn(1, 8).expand(50, 8))  # 50 identical tokens read the same k slots
    usage = mem.memory_usage()
    assert usage.slot_share == k / n**2
    assert usage.read_entropy == pytest.approx(math.log(k))  # k slots, evenly
    mem.reset_usage()
    mem(torch.randn(200, 8))  # varied tokens spread their reads
    spread = mem.memory_usage()
    assert spread.slot_share > 10 * usage.slot_share
    assert spread.read_entropy_ratio > usage.read_entropy_ratio + 0.4


# ---------------------------------------------------------------- config and accounting
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_keys": 8, "k": 9}, r"PKMConfig.k = 9 must be <= n_keys = 8"),
        ({"k_dim": 7}, r"PKMConfig.k_dim = 7 must be even"),
        ({"n_keys": 0}, r"PKMConfig.n_keys must be an integer >= 1"),
        ({"heads": 1.5}, r"PKMConfig.heads must be an integer >= 1"),
        ({"value_dim": 0}, r"PKMConfig.value_dim must be None or an integer >= 1"),
        ({"query_norm": "batch"}, r"query_norm must be one of .* leak future bars"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKMConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = PKMConfig(n_keys=32, k=8, heads=4, value_dim=16, sparse_grad=True)
    assert PKMConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_slots == 1024
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['knn'\]"):
        PKMConfig.from_dict({"knn": 8})


@pytest.mark.parametrize("value_dim", [None, 20])
def test_active_parameters_and_flops(value_dim):
    D, n, k, H, kd = 12, 16, 4, 3, 8
    mem = ProductKeyMemory(D, n, k, H, value_dim, k_dim=kd)
    vd = D if value_dim is None else value_dim
    out = 0 if value_dim is None else vd * D + D
    query = D * H * kd + H * kd + 2 * H * kd  # projection + LayerNorm
    assert sum(p.numel() for p in mem.parameters()) == query + H * n * kd + n * n * vd + out
    assert mem.active_params == query + H * n * kd + H * k * vd + out
    pairs = 8  # rank pairs (a, b) with (a + 1)(b + 1) <= k = 4: 4 + 2 + 1 + 1
    flops = 2 * D * H * kd + 2 * H * n * kd + H * pairs + 2 * H * k * vd
    flops += 2 * vd * D if out else 0
    assert mem.flops_per_token == flops


def test_wrong_width_is_a_clear_error():
    mem = ProductKeyMemory(8, 4, 2)
    with pytest.raises(ValueError, match=r"d_model = 8"):
        mem(torch.randn(3, 9))
