"""What the encoder does differently when compiled for the CPU, against plain references.

Compiled on the CPU (the PPO update's ``compile_update``), block attention is plain ops
(:func:`models.attention.masked_attention`) instead of SDPA and the MLP's GELU is the
sigmoid form of the same function; the rotary tables come from buffers made once. Each is
checked against the eager path or a direct computation, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models.attention as attention
from models import KVSharingPlan, MLKVEncoder
from models.attention import (
    band_mask,
    first_chunk_mask,
    masked_attention,
    rotation_tables,
)
from models.encoder import TanhGELU
from models.rotary import rotary_tables


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_tables_from_the_buffers_are_the_computed_floats(make_encoder, dtype):
    enc = make_encoder(KVSharingPlan.reference(), window=4)
    P = 300
    cos2, sin2 = enc._rotation(P, dtype, torch.device("cpu"))
    pos = torch.arange(P)
    want = rotation_tables(*rotary_tables(pos, enc.config.head_dim, enc.config.rope_base, dtype))
    assert cos2.dtype == sin2.dtype == dtype
    assert torch.equal(cos2, want[0]) and torch.equal(sin2, want[1])
    # a rounded buffer (after .float()) is not used: the tables are computed again
    rounded = make_encoder(KVSharingPlan.reference(), window=4).float()
    rounded.rope_cos2.add_(1.0)  # a wrong table that the check must keep out
    assert torch.equal(rounded._rotation(P, dtype, torch.device("cpu"))[0], want[0])


def test_a_series_longer_than_the_tables_encodes_the_same(make_encoder, monkeypatch):
    plan = KVSharingPlan.reference()
    x = torch.randn(2, 40, 5)
    with torch.no_grad():
        long_tables = make_encoder(plan, window=4).encode_series(x)
        monkeypatch.setattr(MLKVEncoder, "rope_positions", 8)
        short = make_encoder(plan, window=4)
        assert short.rope_cos2.shape[0] == 8
        assert torch.equal(short.encode_series(x), long_tables)


def test_first_chunk_mask_is_first_for_block_zero_and_band_after():
    band = torch.zeros(8, 8).masked_fill_(~band_mask(4, 2), float("-inf"))
    first = band.clone()
    first[:, :3] = float("-inf")
    mask = first_chunk_mask(band, first, 3)
    assert mask.shape == (1, 3, 8, 8)
    assert torch.equal(mask[0, 0], first)
    assert torch.equal(mask[0, 1], band) and torch.equal(mask[0, 2], band)


def test_masked_attention_is_sdpa_forward_and_backward():
    torch.manual_seed(0)
    band = torch.zeros(8, 8).masked_fill_(~band_mask(4, 2), float("-inf"))
    first = band.clone()
    first[:, :4] = float("-inf")
    mask = first_chunk_mask(band, first, 3)  # [1, 3, 8, 8]
    q, k, v = (torch.randn(2, 3, n, 6, requires_grad=True) for n in (8, 8, 8))
    got = masked_attention(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    w = torch.randn_like(got)
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_tanh_gelu_compiled_is_the_same_function():
    x = torch.linspace(-8, 8, 4001, requires_grad=True)
    compiled = torch.compile(TanhGELU(), backend="eager", fullgraph=True)
    got, want = compiled(x), F.gelu(x, approximate="tanh")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    g_got = torch.autograd.grad(got.sum(), x)[0]
    g_want = torch.autograd.grad(want.sum(), x)[0]
    torch.testing.assert_close(g_got, g_want, atol=2e-6, rtol=1e-5)
    assert TanhGELU().approximate == "tanh" and torch.equal(TanhGELU()(x), want)


def test_compiled_cpu_series_matches_eager_and_uses_the_plain_attention(make_encoder, monkeypatch):
    calls = []

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return masked_attention(*args)

    monkeypatch.setattr(attention, "masked_attention", spy)
    enc = make_encoder(KVSharingPlan.reference(), window=4).train()
    x = torch.randn(2, 30, 5)
    ctx = enc.receptive_field - 1

    def loss(fn):
        enc.zero_grad()
        out = fn(x)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        return out.detach(), [p.grad.clone() for p in enc.parameters()]

    def series(x: torch.Tensor) -> torch.Tensor:
        return enc.encode_series(x, outputs_from=ctx)

    eager_out, eager_grads = loss(series)
    assert not calls
    torch._dynamo.reset()
    out, grads = loss(torch.compile(series, backend="eager", fullgraph=True))
    assert calls  # the compiled CPU path ran the plain attention
    torch.testing.assert_close(out, eager_out, atol=2e-6, rtol=1e-5)
    for a, b in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_compiled_block_attention_equals_eager_for_both_mask_kinds(kind):
    torch.manual_seed(0)
    band = band_mask(4, 2)  # [8, 8] bool
    if kind == "additive":
        band = torch.zeros(8, 8).masked_fill_(~band, float("-inf"))
    q, k, v = torch.randn(1, 2, 3, 8, 6), torch.randn(1, 2, 3, 8, 6), torch.randn(1, 2, 3, 8, 6)
    want = attention.block_attention(q, k, v, band, chunk_blocks=2)
    torch._dynamo.reset()
    compiled = torch.compile(attention.block_attention, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, band, 2), want, atol=1e-6, rtol=1e-5)
