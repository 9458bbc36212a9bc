"""The CUDA path: same results as CPU, bf16 autocast, torch.compile (skipped without a GPU).

torch.compile also works on CPU (checked by hand: ~75 s to compile a 3-layer encoder on
the 2-core CPU, max abs diff to eager 6e-7), which is too slow for the test suite.
"""

from __future__ import annotations

import pytest
import torch

from models import KVSharingPlan, PKMConfig, StreamingEncoder

pytestmark = pytest.mark.cuda

ATOL = 1e-4
#: a product-key memory in the middle layer of the reference plan (kwargs of make_encoder)
MEMORY = {"memory_layers": (4,), "memory": PKMConfig(n_keys=16, k=4, heads=2, k_dim=16)}


def _stream(enc, x):
    cache = enc.new_cache(x.shape[0])
    # clone: under CUDA graphs ("reduce-overhead") the next call reuses the output memory
    return torch.stack([enc.step(x[:, t], cache).clone() for t in range(x.shape[1])], dim=1)


@pytest.mark.parametrize(
    ("plan", "memory"),
    [
        (KVSharingPlan.mha(3, 4), {}),
        (KVSharingPlan.reference(), {}),
        (KVSharingPlan.reference(), MEMORY),
    ],
)
@torch.inference_mode()
def test_cuda_matches_cpu_in_all_three_modes(make_encoder, plan, memory):
    enc = make_encoder(plan, window=8, d_model=64, **memory)
    x = torch.randn(3, 100, 5)
    ref = enc.encode_series(x)
    gpu = enc.to("cuda")
    xg = x.cuda()
    rf = gpu.receptive_field
    torch.testing.assert_close(gpu.encode_series(xg).cpu(), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(gpu(xg[:, -rf:])[:, -1].cpu(), ref[:, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(_stream(gpu, xg).cpu(), ref, atol=ATOL, rtol=0)


@torch.inference_mode()
def test_cuda_bf16_autocast_is_close_to_fp32(make_encoder):
    plan = KVSharingPlan.reference()
    ref = make_encoder(plan, window=8, d_model=64).cuda()
    bf = make_encoder(plan, window=8, d_model=64, autocast_bf16=True).cuda()
    x = torch.randn(4, 200, 5, device="cuda")
    a, b = ref.encode_series(x), bf.encode_series(x)
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.15
    assert (_stream(bf, x) - a).abs().max() < 0.15


@pytest.mark.parametrize("memory", [{}, MEMORY])
def test_cuda_bf16_training_step_has_finite_gradients(make_encoder, memory):
    enc = make_encoder(
        KVSharingPlan.reference(), window=16, d_model=64, autocast_bf16=True, **memory
    )
    enc = enc.cuda().train()
    x = torch.randn(64, 46, 5, device="cuda")
    enc(x)[:, -1].square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@torch.inference_mode()
def test_compiled_encoder_matches_eager(make_encoder, mode):
    plan = KVSharingPlan.mlkv(4, 4, 2, 2)
    eager = make_encoder(plan, window=8, d_model=64).cuda()
    compiled = make_encoder(plan, window=8, d_model=64, compile=mode).cuda()
    x = torch.randn(2, 64, 5, device="cuda")
    torch.testing.assert_close(compiled.encode_series(x), eager.encode_series(x), atol=ATOL, rtol=0)
    torch.testing.assert_close(_stream(compiled, x), _stream(eager, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("memory", "compile"), [({}, None), (MEMORY, None), ({}, "reduce-overhead")]
)
@torch.inference_mode()
def test_cuda_graph_stream_matches_eager_steps_and_keeps_its_outputs(
    make_encoder, memory, compile
):
    plan = KVSharingPlan.reference()
    eager = make_encoder(plan, window=8, d_model=64, **memory).cuda()
    graphed = make_encoder(plan, window=8, d_model=64, compile=compile, **memory).cuda()
    stream = StreamingEncoder(graphed, batch=3)
    assert stream.cuda_graph == (compile is None)
    x = torch.randn(3, 40, 5, device="cuda")
    reset = torch.tensor([True, False, True], device="cuda")
    cache = eager.new_cache(3)
    outs, refs = [], []
    for t in range(40):
        if t == 20:
            stream.reset(reset)
            cache.reset(reset)
        outs.append(stream(x[:, t]))  # kept across replays: must not be overwritten
        refs.append(eager.step(x[:, t], cache))
    torch.testing.assert_close(torch.stack(outs, 1), torch.stack(refs, 1), atol=ATOL, rtol=0)
