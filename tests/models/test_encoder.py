"""MLKVEncoder: against a naive reference, config validation, parameters, gradients, API."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch
import yaml

from models import EncoderConfig, KVSharingPlan, MLKVEncoder, PKMConfig


def naive_encode(enc: MLKVEncoder, x: torch.Tensor, memory_ref=None) -> torch.Tensor:
    """Reference: the encoder's weights run bar by bar, head by head, with explicit loops.

    Rotary positions are written with complex numbers (pair ``j`` is ``(x[j], x[j+Dh/2])``,
    rotated by ``pos * base**(-2j/Dh)``), independently of :mod:`models.rotary`.

    Args:
        x: ``[N, F]`` one series.
        memory_ref: ``(memory, x [N, D]) -> (out [N, D], ...)``, the reference for memory
            layers (the conftest's ``brute_force_memory``).

    Returns:
        ``[N, D]``.
    """
    cfg = enc.config
    plan, W, Dh = cfg.plan, cfg.window, cfg.head_dim
    H, Hkv, N = plan.n_heads, plan.n_kv_heads, x.shape[0]
    freqs = cfg.rope_base ** (-torch.arange(Dh // 2, dtype=torch.float64) * 2 / Dh)
    turn = torch.polar(
        torch.ones(N, Dh // 2, dtype=torch.float64),
        torch.arange(N, dtype=torch.float64)[:, None] * freqs,
    )  # [N, Dh/2]

    def rope(v: torch.Tensor) -> torch.Tensor:  # [N, heads, Dh]
        z = torch.complex(v[..., : Dh // 2].double(), v[..., Dh // 2 :].double())
        z = z * turn[:, None]
        return torch.cat((z.real, z.imag), dim=-1).to(v.dtype)

    h = enc.inp(x)
    keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, block in enumerate(enc.blocks):
        a = block.norm1(h)
        attn = block.attn
        if plan.kv_source[i] == i:
            kv = attn.kv_proj(a).view(N, 2, Hkv, Dh)
            keys[i] = (rope(kv[:, 0]), kv[:, 1])
        k, v = keys[plan.kv_source[i]]
        q = rope(attn.q_proj(a).view(N, H, Dh))
        out = torch.zeros(N, H, Dh, dtype=x.dtype)
        for t in range(N):
            lo = max(0, t - W + 1)
            for head in range(H):
                g = head // (H // Hkv)
                scores = k[lo : t + 1, g] @ q[t, head] / math.sqrt(Dh)
                out[t, head] = torch.softmax(scores, 0) @ v[lo : t + 1, g]
        h = h + attn.out_proj(out.reshape(N, H * Dh))
        if block.memory is None:
            h = h + block.mlp(block.norm2(h))
        else:
            h = h + memory_ref(block.memory, block.norm2(h))[0]
    return enc.norm(h)


@pytest.mark.parametrize(
    ("plan", "window"),
    [
        (KVSharingPlan.mha(2, 2), 3),
        (KVSharingPlan.gqa(3, 4, 2), 4),
        (KVSharingPlan.reference(), 2),
        (KVSharingPlan.mlkv(3, 4, 1, 1), 5),
    ],
)
@torch.inference_mode()
def test_matches_the_naive_reference(make_encoder, plan, window):
    enc = make_encoder(plan, window).double()
    x = torch.randn(13, 5, dtype=torch.float64)
    expected = naive_encode(enc, x)
    torch.testing.assert_close(enc.encode_series(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(enc(x[None])[0], expected, atol=1e-10, rtol=0)
    # and the comparison can fail: a wrong window in the reference is caught
    enc_wide = make_encoder(plan, window + 1).double()
    assert (naive_encode(enc_wide, x) - expected).abs().max() > 1e-3


TRIM_PLANS = [
    (KVSharingPlan.reference(), 4),
    (KVSharingPlan.mha(3, 4), 3),
    (KVSharingPlan.cla(4, 4, 2, 2), 5),
    (KVSharingPlan.mlkv(4, 4, 2, 1), 1),
]


@pytest.mark.parametrize(("plan", "window"), TRIM_PLANS)
@pytest.mark.parametrize("chunk", [2048, 5])
def test_outputs_from_matches_the_naive_reference_with_gradients(make_encoder, plan, window,
                                                                 chunk):
    """encode_series(x, outputs_from=c) is rows c.. of the naive reference, and its
    gradients (weights and inputs) are those of the untrimmed pass's rows c.."""
    enc = make_encoder(plan, window).double()
    rf = enc.receptive_field
    x = torch.randn(2, rf + 17, 5, dtype=torch.float64)
    expected = torch.stack([naive_encode(enc, x[b]) for b in range(2)])  # [2, N, D]
    for c in sorted({0, 1, window - 1, window, rf - 1, rf + 3}):
        got = enc.encode_series(x, chunk=chunk, outputs_from=c)
        torch.testing.assert_close(got, expected[:, c:], atol=1e-10, rtol=0)
    c = rf - 1
    g = torch.randn(2, x.shape[1] - c, 32, dtype=torch.float64)
    grads = []
    for trimmed in (True, False):
        xg = x.clone().requires_grad_(True)
        enc.zero_grad(set_to_none=True)
        out = enc.encode_series(xg, outputs_from=c) if trimmed else enc.encode_series(xg)[:, c:]
        (out * g).sum().backward()
        grads.append([xg.grad] + [p.grad for p in enc.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_outputs_from_skips_tokens_and_fails_when_it_skips_one_too_many(make_encoder,
                                                                       monkeypatch):
    """The reference plan's groups run on L+30 / L+15 / L tokens (W = 16); a region one
    token too short is caught by the reference comparison."""
    enc = make_encoder(KVSharingPlan.reference(), 16).double()
    assert enc.series_regions(45) == ([15] * 3 + [30] * 3 + [45] * 3, 0)
    assert enc.series_tokens(109, 45) == 3 * (96 + 80 + 64)
    assert enc.series_tokens(109, 0) == 9 * 112
    x = torch.randn(109, 5, dtype=torch.float64)
    expected = naive_encode(enc, x)[45:]
    with torch.inference_mode():
        torch.testing.assert_close(enc.encode_series(x, outputs_from=45), expected,
                                   atol=1e-10, rtol=0)
        regions = enc.series_regions
        for layer in (0, 3):  # the first query token one too late, in each trimmed group

            def short(c, layer=layer):
                starts, first = regions(c)
                return [s + (i == layer) for i, s in enumerate(starts)], first

            monkeypatch.setattr(enc, "series_regions", short)
            wrong = enc.encode_series(x, outputs_from=45)
            assert (wrong - expected).abs().max() > 1e-6
            monkeypatch.undo()


def test_outputs_from_rounds_like_the_whole_pass_under_bf16():
    """Under bf16 autocast the trimmed pass gives the whole pass's rows: its matmuls see
    contiguous rows, as the whole pass's do (a strided view of them rounds differently)."""
    cfg = EncoderConfig(5, 32, KVSharingPlan.mlkv(3, 4, 2, 2), window=4, autocast_bf16=True)
    for seed in range(4):
        torch.manual_seed(seed)
        enc = MLKVEncoder(cfg)
        with torch.no_grad():
            for p in enc.parameters():  # sharp weights: a rounding difference would show
                p.add_(0.2 * torch.randn_like(p))
            x = torch.randn(3, 30, 5)
            c = enc.receptive_field - 1
            torch.testing.assert_close(enc.encode_series(x, outputs_from=c),
                                       enc.encode_series(x)[:, c:], atol=1e-6, rtol=0)


def test_outputs_from_is_checked(make_encoder):
    enc = make_encoder(KVSharingPlan.mha(2, 2), 3)
    with pytest.raises(ValueError, match="outputs_from must be in"):
        enc.encode_series(torch.randn(6, 5), outputs_from=6)


@pytest.mark.parametrize(
    ("plan", "layers", "memory"),
    [
        (KVSharingPlan.reference(), (4,), PKMConfig(n_keys=8, k=3, heads=2, k_dim=8)),
        (KVSharingPlan.mha(2, 2), (0, 1), PKMConfig(n_keys=5, k=5, heads=1, k_dim=4)),
        (KVSharingPlan.gqa(3, 4, 2), (1,), PKMConfig(n_keys=6, k=2, heads=3, value_dim=9)),
    ],
)
@torch.inference_mode()
def test_memory_layers_match_the_naive_reference(
    make_encoder, brute_force_memory, plan, layers, memory
):
    enc = make_encoder(plan, 3, memory_layers=layers, memory=memory).double()
    x = torch.randn(13, 5, dtype=torch.float64)
    expected = naive_encode(enc, x, brute_force_memory)
    torch.testing.assert_close(enc.encode_series(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(enc(x[None])[0], expected, atol=1e-10, rtol=0)
    cache = enc.new_cache(1)
    steps = torch.cat([enc.step(x[t : t + 1], cache) for t in range(13)])
    torch.testing.assert_close(steps, expected, atol=1e-10, rtol=0)

    # and the comparison can fail: a reference that reads one slot fewer is caught
    def fewer(mem, h):
        return brute_force_memory(mem, h, k=mem.config.k - 1)

    assert (naive_encode(enc, x, fewer) - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_model": 30}, "d_model = 30 must be divisible by plan.n_heads = 4"),
        ({"d_model": 12}, r"head_dim\) must be even"),
        ({"window": 0}, "EncoderConfig.window must be an integer >= 1"),
        ({"n_features": 0}, "EncoderConfig.n_features"),
        ({"mlp_ratio": 0}, "EncoderConfig.mlp_ratio"),
        ({"chunk": 0}, "EncoderConfig.chunk"),
        ({"window": 2.5}, "EncoderConfig.window"),
        ({"dropout": 1.0}, r"EncoderConfig.dropout must be in \[0, 1\)"),
        ({"rope_base": 1.0}, "EncoderConfig.rope_base"),
        ({"norm_eps": 0.0}, "EncoderConfig.norm_eps"),
        ({"compile": "fast"}, "EncoderConfig.compile"),
        ({"plan": "mlkv"}, "EncoderConfig.plan"),
        ({"plan": {"kind": "mlkv", "n_layers": 2}}, "missing"),
        (
            {"memory_layers": (2,)},
            r"memory_layers = \(2,\): layer index 2 is out of range; "
            r"the plan has 2 layers \(0 .. 1\)",
        ),
        ({"memory_layers": (-1,)}, "layer index -1 is out of range"),
        ({"memory_layers": (1, 1)}, r"repeats a layer"),
        ({"memory_layers": 1}, "memory_layers must be a sequence of layer indices"),
        (
            {"memory_layers": (0,), "memory": {"n_keys": 4, "k": 8}},
            r"EncoderConfig.memory: PKMConfig.k = 8 must be <= n_keys = 4",
        ),
        ({"memory": {"slots": 4}}, r"EncoderConfig.memory: PKMConfig: unknown field"),
        ({"memory": "pkm"}, "EncoderConfig.memory must be a PKMConfig"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    base = {"n_features": 3, "d_model": 16, "plan": KVSharingPlan.mha(2, 4), "window": 4}
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**{**base, **kwargs})


def test_config_accepts_a_plan_dict_and_round_trips():
    cfg = EncoderConfig(7, 64, {"kind": "reference"}, window=16, dropout=0.1)
    assert cfg.plan == KVSharingPlan.reference()
    assert cfg.receptive_field == 3 * 15 + 1
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


def test_config_with_memory_round_trips_through_json_and_yaml():
    memory = {"n_keys": 16, "k": 4, "heads": 2, "value_dim": 24}
    cfg = EncoderConfig(5, 32, {"kind": "reference"}, 4, memory_layers=[6, 2], memory=memory)
    assert cfg.memory_layers == (2, 6) and cfg.memory == PKMConfig(**memory)
    spec = cfg.to_dict()
    assert spec["memory_layers"] == [2, 6] and spec["memory"]["value_dim"] == 24
    assert EncoderConfig.from_dict(json.loads(json.dumps(spec))) == cfg
    assert EncoderConfig.from_dict(yaml.safe_load(yaml.safe_dump(spec))) == cfg
    # memory layers without a memory config take the defaults
    assert (
        EncoderConfig(5, 32, KVSharingPlan.mha(2, 4), 4, memory_layers=(1,)).memory == PKMConfig()
    )


def test_config_without_memory_keeps_its_old_dict():
    cfg = EncoderConfig(5, 32, KVSharingPlan.reference(), 4)
    old_keys = {
        "n_features",
        "d_model",
        "plan",
        "window",
        "mlp_ratio",
        "dropout",
        "rope_base",
        "bias",
        "norm_eps",
        "chunk",
        "autocast_bf16",
        "compile",
    }
    assert set(cfg.to_dict()) == old_keys
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.memory_layers == () and cfg.memory is None
    enc = MLKVEncoder(cfg)
    assert enc.memories == {} and enc.memory_usage() == {}
    assert all(b.memory is None and b.mlp is not None for b in enc.blocks)


def _kv_params(d: int, plan: KVSharingPlan) -> int:
    return d * 2 * plan.n_kv_heads * (d // plan.n_heads) + 2 * plan.n_kv_heads * (d // plan.n_heads)


@pytest.mark.parametrize(
    "plan",
    [
        KVSharingPlan.mha(4, 4),
        KVSharingPlan.gqa(4, 4, 2),
        KVSharingPlan.cla(4, 4, 2, 2),
        KVSharingPlan.mlkv(4, 4, 2, 1),
        KVSharingPlan.reference(),
    ],
)
def test_parameter_count_drops_by_the_missing_kv_projections(plan):
    d, f = 32, 6
    enc = MLKVEncoder(EncoderConfig(f, d, plan, window=3))
    per_layer = 2 * d + (d * d + d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = (f * d + d) + plan.n_layers * per_layer + plan.n_kv_layers * _kv_params(d, plan)
    expected += 2 * d  # final norm
    assert sum(p.numel() for p in enc.parameters()) == expected
    for i, block in enumerate(enc.blocks):
        assert (block.attn.kv_proj is not None) == (i in plan.owners)
    # an all-owner plan with the same heads has exactly the shared projections more
    full = MLKVEncoder(
        EncoderConfig(
            f, d, KVSharingPlan.gqa(plan.n_layers, plan.n_heads, plan.n_kv_heads), window=3
        )
    )
    extra = (plan.n_layers - plan.n_kv_layers) * _kv_params(d, plan)
    assert sum(p.numel() for p in full.parameters()) - expected == extra


def test_memory_layer_swaps_the_mlp_for_the_memory_parameters():
    d, f, plan = 32, 6, KVSharingPlan.reference()
    memory = PKMConfig(n_keys=16, k=4, heads=2, k_dim=8)
    dense = MLKVEncoder(EncoderConfig(f, d, plan, window=3))
    sparse = MLKVEncoder(EncoderConfig(f, d, plan, window=3, memory_layers=(4,), memory=memory))
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    pkm = (d * 16 + 16) + 2 * 16 + 2 * 16 * 8 + 16**2 * d  # query, LayerNorm, sub-keys, values
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sparse) == count(dense) - mlp + pkm
    assert sparse.blocks[4].mlp is None and sparse.blocks[4].memory is not None
    assert set(sparse.memories) == {4}
    assert sparse.memories[4].active_params == pkm - 16**2 * d + 2 * 4 * d
    assert "memory_layers=(4,)" in repr(sparse)


@pytest.mark.parametrize("mode", ["forward", "encode_series", "encode_series_batched"])
@pytest.mark.parametrize("memory_layers", [(), (1, 4)])
def test_gradients_reach_every_parameter(make_encoder, mode, memory_layers):
    enc = make_encoder(
        KVSharingPlan.reference(),
        window=3,
        dropout=0.1,
        memory_layers=memory_layers,
        memory=PKMConfig(n_keys=8, k=4, heads=2, k_dim=8),
    ).train()
    x = torch.randn(2, 20, 5, requires_grad=True)
    if mode == "forward":
        y = enc(x)
    elif mode == "encode_series":
        y = enc.encode_series(x[0], chunk=6)
    else:
        y = enc.encode_series(x, chunk=6)
    assert y.requires_grad
    y.square().mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@torch.inference_mode()
def test_memory_usage_counts_the_reads_of_every_mode_without_padding(make_encoder):
    memory = PKMConfig(n_keys=8, k=3, heads=2, k_dim=8)
    enc = make_encoder(KVSharingPlan.reference(), 4, memory_layers=(0, 5), memory=memory)
    per_token = 2 * 3
    enc.encode_series(torch.randn(2, 11, 5))  # 11 bars: padded to 12 inside, 11 counted
    assert {i: u.reads for i, u in enc.memory_usage().items()} == {
        0: 22 * per_token,
        5: 22 * per_token,
    }
    enc.reset_memory_usage()
    enc(torch.randn(3, 7, 5))
    assert enc.memory_usage(reset=True)[5].reads == 21 * per_token
    assert enc.memory_usage()[5].reads == 0
    cache = enc.new_cache(4)
    for _ in range(2):
        enc.step(torch.randn(4, 5), cache)
    usage = enc.memory_usage()[0]
    assert usage.reads == 8 * per_token and 0 < usage.slot_share <= 8 * per_token / 64


def test_dropout_is_active_in_training_only(make_encoder):
    enc = make_encoder(KVSharingPlan.gqa(2, 4, 2), window=4, dropout=0.5)
    x = torch.randn(1, 16, 5)
    enc.train()
    assert not torch.equal(enc(x), enc(x))
    enc.eval()
    assert torch.equal(enc(x), enc(x))


def test_shapes_and_receptive_field():
    enc = MLKVEncoder(EncoderConfig(5, 32, KVSharingPlan.reference(), window=8))
    assert enc.receptive_field == 3 * 7 + 1  # not n_layers * 7 + 1 = 64
    mha = MLKVEncoder(EncoderConfig(5, 32, KVSharingPlan.mha(9, 8), window=8))
    assert mha.receptive_field == 9 * 7 + 1
    with torch.inference_mode():
        assert enc(torch.randn(3, 11, 5)).shape == (3, 11, 32)
        assert enc.encode_series(torch.randn(50, 5)).shape == (50, 32)
        assert enc.encode_series(torch.randn(2, 50, 5)).shape == (2, 50, 32)
        assert enc.encode_series(torch.randn(1, 5)).shape == (1, 32)
        assert enc.step(torch.randn(4, 5), enc.new_cache(4)).shape == (4, 32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e(torch.randn(10, 5)), r"expected windows \[B, T, F=5\]"),
        (lambda e: e(torch.randn(2, 10, 4)), "n_features = 5"),
        (lambda e: e.encode_series(torch.randn(10)), r"expected \[N, F=5\]"),
        (lambda e: e.encode_series(torch.randn(10, 6)), "n_features = 5"),
        (lambda e: e.encode_series(torch.randn(10, 5), chunk=0), "chunk must be >= 1"),
        (lambda e: e.step(torch.randn(3, 5), e.new_cache(2)), r"x_t \[B=2, F=5\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    enc = MLKVEncoder(EncoderConfig(5, 16, KVSharingPlan.mqa(2, 4), window=4))
    with pytest.raises(ValueError, match=message):
        call(enc)


def test_new_cache_follows_the_encoder_dtype_and_is_not_in_the_state_dict():
    enc = MLKVEncoder(EncoderConfig(5, 16, KVSharingPlan.mqa(2, 4), window=4)).double()
    cache = enc.new_cache(3)
    assert cache.k0.dtype == torch.float64 and cache.k0.shape == (3, 1, 4, 4)
    assert all("cache" not in k for k in enc.state_dict())


def test_encoder_deep_copies_and_pickles_without_its_compiled_functions():
    enc = MLKVEncoder(EncoderConfig(5, 16, KVSharingPlan.reference(), window=4, compile="default"))
    stand_in = {n: lambda *a: None for n in ("series_grad", "series_infer", "step")}
    enc.__dict__["_compiled"] = stand_in  # stands in for torch.compile output
    x = torch.randn(1, 12, 5)
    with torch.inference_mode():
        for other in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):
            assert "_compiled" not in other.__dict__
            torch.testing.assert_close(
                other._blocks(x, None, 16), enc._blocks(x, None, 16), atol=0, rtol=0
            )


@pytest.mark.parametrize("memory_layers", [(), (4,)])
@torch.inference_mode()
def test_bf16_autocast_runs_on_cpu_close_to_fp32(make_encoder, memory_layers):
    plan = KVSharingPlan.reference()
    mem = {"memory_layers": memory_layers, "memory": PKMConfig(n_keys=8, k=3, heads=2, k_dim=8)}
    enc32 = make_encoder(plan, window=4, **mem)
    enc16 = make_encoder(plan, window=4, autocast_bf16=True, **mem)
    x = torch.randn(2, 30, 5)
    ref = enc32.encode_series(x)
    out = enc16.encode_series(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.15
    cache = enc16.new_cache(2)
    assert cache.k0.dtype == torch.float32  # keys rotated in fp32 stay fp32
    steps = torch.stack([enc16.step(x[:, t], cache) for t in range(30)], dim=1)
    assert (steps - ref).abs().max() < 0.15
