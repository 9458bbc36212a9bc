"""StreamingEncoder: step on owned static buffers (the CUDA-graph shape), proven on the CPU.

What a CUDA graph needs and the CPU can check: the stepped function reads only the module's
own buffers (no tensor arguments), mutates them in place, traces to one graph for any number
of steps and resets, and every output escapes as a fresh tensor. The capture itself runs in
``tests/models/test_cuda.py``.
"""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
from torch._dynamo.utils import counters

from models import KVSharingPlan, MLKVEncoder, PKMConfig, StreamingEncoder

MEMORY = {"memory_layers": (4,), "memory": PKMConfig(n_keys=8, k=3, heads=2, k_dim=8)}


def plain_stream(enc, x, resets):
    cache = enc.new_cache(x.shape[0])
    outs = []
    for t in range(x.shape[1]):
        if t in resets:
            cache.reset(resets[t])
        outs.append(enc.step(x[:, t], cache))
    return torch.stack(outs, dim=1)


def owned_stream(stream, x, resets):
    outs = []
    for t in range(x.shape[1]):
        if t in resets:
            stream.reset(resets[t])
        outs.append(stream(x[:, t]))
    return torch.stack(outs, dim=1)


RESETS = {7: torch.tensor([True, False, True]), 15: torch.tensor([False, True, False])}


@pytest.mark.parametrize("memory", [{}, MEMORY])
@torch.inference_mode()
def test_streaming_encoder_equals_step_with_a_cache(make_encoder, memory):
    enc = make_encoder(KVSharingPlan.reference(), window=4, **memory)
    x = torch.randn(3, 20, 5)
    ref = plain_stream(enc, x, RESETS)
    stream = StreamingEncoder(enc, batch=3)
    assert not stream.cuda_graph  # CPU
    torch.testing.assert_close(owned_stream(stream, x, RESETS), ref, atol=0, rtol=0)
    torch.testing.assert_close(stream.encoder.encode_series(x[:, :7]), ref[:, :7], atol=1e-4,
                               rtol=0)


@torch.inference_mode()
def test_outputs_escape_as_fresh_tensors(make_encoder):
    """On the CPU every output is fresh anyway; test_cuda.py checks it under graph replay."""
    enc = make_encoder(KVSharingPlan.mqa(2, 4), window=4)
    stream, cache = StreamingEncoder(enc, batch=2), enc.new_cache(2)
    xs = torch.randn(2, 2, 5)
    first = stream(xs[0])
    kept = first.clone()
    enc.step(xs[0], cache)
    first.add_(1.0)  # a caller writing into its output does not reach the module
    second = stream(xs[1])
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first - 1.0, kept, atol=1e-6, rtol=0)
    torch.testing.assert_close(second, enc.step(xs[1], cache), atol=0, rtol=0)


def test_the_stepped_function_reads_only_owned_buffers(make_encoder):
    stream = StreamingEncoder(make_encoder(KVSharingPlan.reference(), window=4), batch=3)
    assert list(inspect.signature(stream._run).parameters) == []  # nothing passed in
    buffers = dict(stream.named_buffers())
    assert {"x_t", "cache.pos", "cache.k0", "cache.v0"} <= set(buffers)
    assert all(b.data_ptr() == buffers[n].data_ptr() for n, b in stream.named_buffers())
    with pytest.raises(ValueError, match=r"expected x_t of shape \(3, 5\)"):
        stream(torch.randn(2, 5))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        StreamingEncoder(stream.encoder, batch=3, cuda_graph=True)


@torch.inference_mode()
def test_compiled_stream_is_one_graph_for_every_step_and_reset(make_encoder, monkeypatch):
    monkeypatch.setattr(MLKVEncoder, "compile_backend", "eager")
    torch._dynamo.reset()
    counters.clear()
    enc = make_encoder(KVSharingPlan.reference(), window=4, **MEMORY)
    compiled_enc = make_encoder(
        KVSharingPlan.reference(), window=4, compile="reduce-overhead", **MEMORY
    )
    x = torch.randn(3, 20, 5)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        out = owned_stream(StreamingEncoder(compiled_enc, batch=3), x, RESETS)
    # 2e-6: compiled on CPU, TanhGELU is the sigmoid form of the same function (5e-7 apart)
    torch.testing.assert_close(out, plain_stream(enc, x, RESETS), atol=2e-6, rtol=0)
    assert counters["stats"]["unique_graphs"] == 1  # fullgraph: no breaks, no recompiles
    torch._dynamo.reset()


def test_streaming_encoder_copies_and_pickles_without_compiled_state(make_encoder):
    stream = StreamingEncoder(make_encoder(KVSharingPlan.mqa(2, 4), window=4), batch=2)
    stream.__dict__["_compiled"] = lambda: None  # stands in for torch.compile output
    for other in (copy.deepcopy(stream), pickle.loads(pickle.dumps(stream))):
        assert "_compiled" not in other.__dict__ and other._graph is None
        with torch.inference_mode():
            assert other(torch.randn(2, 5)).shape == (2, 32)


@pytest.mark.parametrize("memory", [{}, MEMORY])
@torch.inference_mode()
def test_a_step_never_reads_a_tensor_on_the_host(make_encoder, host_transfers, memory):
    """A host read inside the step would be a sync, which a CUDA graph capture refuses."""
    stream = StreamingEncoder(
        make_encoder(KVSharingPlan.reference(), window=4, autocast_bf16=True, **memory), batch=3
    )
    x = torch.randn(3, 10, 5)
    with host_transfers() as transfers:
        for t in range(10):
            stream(x[:, t])
        stream.reset(torch.tensor([True, False, True]))
        stream(x[:, 0])
    assert transfers.count == 0
