"""Adam over one flat buffer of all parameters, saved and loaded per parameter like Adam.

A PPO gradient step of the MLKV policy touches ~130 small parameter tensors. torch's fused
Adam is one kernel for all of them, but on the CPU its per-tensor bookkeeping (a step
counter per tensor, advanced one tensor at a time) costs twice the kernel. :class:`FlatAdam`
keeps every parameter as a view of one ``[P]`` buffer and, when the gradients are views of
one ``[P]`` buffer too (:meth:`agents.MLKVActorCriticPolicy.flat_grads`), runs torch's Adam
on the two flat tensors: the same update (the same element-wise formula on the same
numbers), one tensor of bookkeeping.

Its ``state_dict`` is exactly :class:`torch.optim.Adam`'s (per parameter), so checkpoints
move freely between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch as th
from torch import nn

__all__ = ["FlatAdam"]


class FlatAdam(th.optim.Adam):
    """:class:`torch.optim.Adam` that steps all parameters as one flat tensor when it can.

    Takes Adam's arguments. A step runs flat when there is one parameter group, every
    parameter has a gradient, all share a device and dtype, and the gradients are
    consecutive views of one buffer (in parameter order); otherwise it is Adam's own step.
    The first flat step moves the parameters into one buffer (each ``p.data`` becomes a
    view of it; values unchanged) and Adam's per-parameter state into flat moments.

    Example:
        >>> opt = FlatAdam(model.parameters(), lr=1e-4, eps=1e-5, fused=True)
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._kwargs = kwargs
        self._flat: tuple[th.Tensor, th.Tensor, th.optim.Adam] | None = None  # data, grad, inner
        self._expected: list[tuple[int, int]] = []  # _addresses() after the last flat step

    @th.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One Adam step of every parameter (flat when possible, see the class doc)."""
        loss = None
        if closure is not None:
            with th.enable_grad():
                loss = closure()
        inner = self._ready_inner()
        if inner is None:
            self._sync_state()
            self._flat = None
            super().step()
            return loss
        group = self.param_groups[0]
        inner.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        inner.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Adam's per-parameter state dict (the flat moments are written back first)."""
        self._sync_state()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adam's ``load_state_dict``; the next flat step reads the loaded state."""
        super().load_state_dict(state_dict)
        self._flat = None

    # ------------------------------------------------------------------ implementation
    def _params(self) -> list[th.Tensor]:
        return list(self.param_groups[0]["params"]) if len(self.param_groups) == 1 else []

    def _ready_inner(self) -> th.optim.Adam | None:
        """The Adam over the flat buffers if this step can run flat, else ``None``."""
        params = self._params()
        if not params or any(p.grad is None for p in params):
            return None
        if self._flat is not None and self._addresses(params) == self._expected:
            return self._flat[2]  # nothing moved since the last flat step
        grads = self._flat_grads(params)
        return None if grads is None else self._inner(params, grads)

    def _flat_grads(self, params: list[th.Tensor]) -> th.Tensor | None:
        """The ``[P]`` buffer whose consecutive slices are the gradients, or ``None``."""
        base = params[0].grad._base
        if base is None or base.dim() != 1 or not base.is_contiguous():
            return None
        if base.numel() != sum(p.numel() for p in params) or base.dtype != params[0].dtype:
            return None
        offset = base.storage_offset()
        for p in params:
            g = p.grad
            if g._base is not base or g.storage_offset() != offset or not g.is_contiguous():
                return None
            if p.device != base.device or p.dtype != base.dtype:
                return None
            offset += p.numel()
        return base

    @staticmethod
    def _addresses(params: list[th.Tensor]) -> list[tuple[int, int]]:
        """``(data, grad)`` addresses of every parameter: a cheap per-step check that nothing
        moved (both buffers are held alive by the flat step, so no other tensor can sit at
        those addresses)."""
        return [(p.data_ptr(), p.grad.data_ptr()) for p in params]  # type: ignore[union-attr]

    def _inner(self, params: list[th.Tensor], grads: th.Tensor) -> th.optim.Adam:
        """The Adam over the flat parameter buffer (made, or remade if anything moved)."""
        flat = self._flat
        if flat is not None and flat[1] is grads and _are_views(params, flat[0]):
            self._expected = self._addresses(params)
            return flat[2]
        self._sync_state()
        data = th.cat([p.detach().reshape(-1) for p in params])  # [P]
        offset = 0
        for p in params:
            p.data = data[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        flat_param = nn.Parameter(data)  # shares data's storage
        flat_param.grad = grads
        inner = th.optim.Adam([flat_param], **self._kwargs)
        states = [self.state.get(p, {}) for p in params]
        if any(states):
            if not all(states) or len({float(s["step"]) for s in states}) != 1:
                raise RuntimeError(
                    "FlatAdam: some parameters have Adam state and others none, or their step "
                    "counts differ; the flat step needs one common state."
                )
            state = {"step": states[0]["step"].clone()}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in states[0]:
                    state[key] = th.cat([s[key].reshape(-1) for s in states]).to(data)
            inner.state[flat_param] = state
        self._flat = (data, grads, inner)
        self._expected = self._addresses(params)
        return inner

    def _sync_state(self) -> None:
        """Write the flat moments back into Adam's per-parameter state (views, no copy)."""
        if self._flat is None:
            return
        _, _, inner = self._flat
        params = self._params()  # the moments are by offset: valid even if a parameter moved
        flat_state = next(iter(inner.state.values()), None)
        if not flat_state:
            return
        offset = 0
        for p in params:
            n = p.numel()
            state = {"step": flat_state["step"].clone()}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in flat_state:
                    state[key] = flat_state[key][offset : offset + n].view_as(p)
            self.state[p] = state
            offset += n


def _are_views(params: list[th.Tensor], data: th.Tensor) -> bool:
    """Whether ``params`` are still the consecutive slices of ``data``, in order."""
    offset = data.storage_offset()
    storage = data.untyped_storage().data_ptr()
    for p in params:
        if p.untyped_storage().data_ptr() != storage or p.storage_offset() != offset:
            return False
        offset += p.numel()
    return offset == data.storage_offset() + data.numel()
