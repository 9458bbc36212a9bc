"""KV-cache accounting (the MLKV paper's table) and the ring-buffer cache module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import EncoderConfig, KVCache, KVSharingPlan, MLKVEncoder, cache_bytes

MiB = 2**20

# Pythia-160M (12 layers, 12 heads, head_dim 64), batch 8, 2,048 tokens, fp32:
# arXiv 2406.09297 Table 1 lists the KV cache of each sharing configuration.
PYTHIA_TABLE = [
    (KVSharingPlan.mha(12, 12), 144, 1152),
    (KVSharingPlan.gqa(12, 12, 4), 48, 384),
    (KVSharingPlan.mlkv(12, 12, 12, 4), 48, 384),
    (KVSharingPlan.mqa(12, 12), 12, 96),
    (KVSharingPlan.mlkv(12, 12, 1, 12), 12, 96),
    (KVSharingPlan.mlkv(12, 12, 1, 6), 6, 48),
    (KVSharingPlan.mlkv(12, 12, 1, 2), 2, 16),
]


@pytest.mark.parametrize(("plan", "kv_heads", "mib"), PYTHIA_TABLE)
def test_cache_bytes_reproduces_the_pythia_160m_table(plan, kv_heads, mib):
    assert plan.total_kv_heads == kv_heads
    assert cache_bytes(plan, 64, 8, 2048, torch.float32) == mib * MiB


def test_cache_bytes_scales_with_dtype_batch_and_length():
    plan = KVSharingPlan.reference()
    base = cache_bytes(plan, 16, 1, 1, torch.float32)
    assert base == 2 * 6 * 16 * 4
    assert cache_bytes(plan, 16, 3, 5, torch.bfloat16) == base * 3 * 5 // 2
    assert cache_bytes(plan, 16, 1, 1, torch.float64) == base * 2


@pytest.mark.parametrize(
    "plan",
    [
        KVSharingPlan.mha(3, 4),
        KVSharingPlan.mqa(3, 4),
        KVSharingPlan.cla(4, 4, 2, 2),
        KVSharingPlan.reference(),
        KVSharingPlan.mlkv(5, 4, 1, 1),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_measured_cache_bytes_equal_the_formula(plan, dtype):
    cfg = EncoderConfig(n_features=3, d_model=32, plan=plan, window=7)
    cache = MLKVEncoder(cfg).new_cache(5, dtype=dtype)
    measured = sum(b.nbytes for name, b in cache.named_buffers() if name != "pos")
    expected = cache_bytes(plan, cfg.head_dim, 5, 7, dtype)
    assert cache.nbytes == measured == expected


def test_cache_has_buffers_for_owner_layers_only_and_none_in_state_dict():
    plan = KVSharingPlan.reference()
    cache = KVCache(plan, batch=2, window=4, head_dim=8)
    names = {n for n, _ in cache.named_buffers()}
    assert names == {"pos", "k0", "v0", "k3", "v3", "k6", "v6"}
    assert cache.state_dict() == {}


def test_reference_plan_needs_one_twelfth_of_the_mha_cache():
    mha, ref = KVSharingPlan.mha(9, 8), KVSharingPlan.reference()
    assert cache_bytes(mha, 8, 1, 32, torch.float32) == 12 * cache_bytes(
        ref, 8, 1, 32, torch.float32
    )


def test_update_writes_each_row_at_its_own_slot_and_reset_restarts_rows():
    plan = KVSharingPlan.mlkv(2, 2, 1, 1)
    cache = KVCache(plan, batch=3, window=3, head_dim=2)
    for t in range(4):  # rows at positions 0..3 -> slots 0,1,2,0
        val = torch.full((3, 1, 2), float(t + 1))
        k, v = cache.update(0, val, -val)
        cache.advance()
    assert cache.pos.tolist() == [4, 4, 4]
    assert k[:, 0, :, 0].tolist() == [[4.0, 2.0, 3.0]] * 3
    assert torch.equal(v, -k)
    cache.reset(torch.tensor([False, True, False]))
    assert cache.pos.tolist() == [4, 0, 4]
    assert k[1].abs().sum() == 0 and k[0].abs().sum() > 0
    cache.update(0, torch.full((3, 1, 2), 9.0), torch.zeros(3, 1, 2))
    assert k[1, 0, :, 0].tolist() == [9.0, 0.0, 0.0]  # restarted row writes slot 0
    assert k[0, 0, :, 0].tolist() == [4.0, 9.0, 3.0]  # others continue at slot pos % W
    cache.reset()
    assert cache.pos.tolist() == [0, 0, 0] and k.abs().sum() == 0


def test_reset_accepts_numpy_dones_from_a_vec_env():
    cache = KVCache(KVSharingPlan.mqa(1, 2), batch=3, window=2, head_dim=2)
    cache.pos += 5
    cache.reset(np.array([True, False, True]))
    assert cache.pos.tolist() == [0, 5, 0]


def test_reset_rejects_a_mask_of_the_wrong_shape_or_dtype():
    cache = KVCache(KVSharingPlan.mqa(1, 2), batch=3, window=2, head_dim=2)
    with pytest.raises(ValueError, match=r"bool tensor of shape \[3\]"):
        cache.reset(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="bool tensor"):
        cache.reset(torch.tensor([1, 0, 1]))
