"""FlatAdam: the same steps as torch's Adam, one flat tensor, Adam's state dict."""

from __future__ import annotations

import copy

import pytest
import torch as th
from torch import nn
from torch.testing import assert_close

from agents import FlatAdam


def net() -> nn.Module:
    th.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Tanh(), nn.Linear(7, 2))


def flat_grads(model: nn.Module) -> th.Tensor:
    """Gradients as consecutive views of one buffer (what the policy's flat_grads makes)."""
    params = list(model.parameters())
    flat = th.zeros(sum(p.numel() for p in params))
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def train(model: nn.Module, opt: th.optim.Optimizer, steps: int, flat: bool, seed: int = 1):
    g = th.Generator().manual_seed(seed)
    buffer = flat_grads(model) if flat else None
    for _ in range(steps):
        x = th.randn(16, 5, generator=g)
        if buffer is None:
            opt.zero_grad()
        else:
            buffer.zero_()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("kwargs", [{"fused": True}, {"foreach": False}, {"amsgrad": True}])
def test_flat_steps_equal_adam_and_state_dicts_interchange(kwargs) -> None:
    ref, flat = net(), net()
    opt_ref = th.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5, **kwargs)
    opt = FlatAdam(flat.parameters(), lr=1e-2, eps=1e-5, **kwargs)
    train(ref, opt_ref, 5, flat=False)
    train(flat, opt, 5, flat=True)
    assert opt._flat is not None  # it did step flat
    for a, b in zip(ref.parameters(), flat.parameters(), strict=True):
        assert_close(a, b, atol=1e-7, rtol=1e-6)
    base = next(flat.parameters()).untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in flat.parameters())
    # the state dict is Adam's: it loads into a plain Adam and back, and training goes on alike
    state = opt.state_dict()
    ref_state = opt_ref.state_dict()
    assert state["param_groups"] == ref_state["param_groups"]
    assert state["state"].keys() == ref_state["state"].keys()
    for i, s in state["state"].items():
        assert s.keys() == ref_state["state"][i].keys()
        for key in s:
            assert_close(s[key], ref_state["state"][i][key], atol=1e-7, rtol=1e-6)
    plain_model = copy.deepcopy(flat)
    plain = th.optim.Adam(plain_model.parameters(), lr=1e-2, eps=1e-5, **kwargs)
    plain.load_state_dict(copy.deepcopy(state))
    again_model = copy.deepcopy(ref)
    again = FlatAdam(again_model.parameters(), lr=1e-2, eps=1e-5, **kwargs)
    again.load_state_dict(copy.deepcopy(ref_state))
    train(plain_model, plain, 3, flat=False, seed=2)
    train(again_model, again, 3, flat=True, seed=2)
    train(ref, opt_ref, 3, flat=False, seed=2)
    for a, b, c in zip(ref.parameters(), plain_model.parameters(), again_model.parameters(),
                       strict=True):
        assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert_close(c, a, atol=1e-6, rtol=1e-5)
    # and the comparison can fail: a different learning rate is caught
    other = net()
    train(other, FlatAdam(other.parameters(), lr=2e-2, eps=1e-5, **kwargs), 5, flat=True)
    with pytest.raises(AssertionError):
        for a, b in zip(net().parameters(), other.parameters(), strict=True):
            assert_close(a, b, atol=1e-7, rtol=1e-6)


def twins() -> tuple[nn.Module, th.optim.Adam, nn.Module, FlatAdam]:
    """The same net twice: one with torch's fused Adam, one with FlatAdam."""
    ref, model = net(), net()
    return (ref, th.optim.Adam(ref.parameters(), lr=1e-2, fused=True), model,
            FlatAdam(model.parameters(), lr=1e-2, fused=True))


def test_scattered_gradients_take_adams_own_step() -> None:
    """Gradients that are not views of one buffer: Adam's per-parameter step, same result."""
    ref, opt_ref, model, opt = twins()
    train(ref, opt_ref, 3, flat=False)
    train(model, opt, 3, flat=False)
    assert opt._flat is None
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert_close(a, b, atol=0, rtol=0)
    train(model, opt, 2, flat=True)  # switches to flat steps with the accumulated state
    train(ref, opt_ref, 2, flat=False)
    assert opt._flat is not None
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_a_moved_parameter_is_noticed_and_the_flat_buffer_remade() -> None:
    """A parameter whose data was replaced (e.g. by ``module.to``) is not stepped stale."""
    ref, opt_ref, model, opt = twins()
    train(ref, opt_ref, 2, flat=False)
    train(model, opt, 2, flat=True)
    first = opt._flat
    moved = next(model.parameters())
    moved.data = moved.data.clone()  # no longer a view of the flat buffer
    train(ref, opt_ref, 2, flat=False, seed=2)
    train(model, opt, 2, flat=True, seed=2)
    assert opt._flat is not first
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert_close(a, b, atol=1e-7, rtol=1e-6)
