"""The actors of several MLKV policies as one batched function (backtest lockstep).

A backtest walks ``K`` passes of each of ``S`` policies (one per training seed) through the
test period step by step; each step only runs the actor heads on ``S x K`` rows. With one
small ``nn.Module`` call per policy per step, dispatch costs more than the math. A
:class:`StackedActor` holds every policy's actor layers as stacked weights and runs all
``S`` policies in one batched matmul per layer (``torch.baddbmm``).

Its results for policy ``s`` do not depend on which other policies are stacked with it:
each matrix of a batched matmul is computed alone, so one policy gives the same floats in
a stack of one (a distributed backtest, one task per seed) as in a stack of five (one
process). Two degenerate shapes break that on CPU (a single output column goes through a
matrix-vector kernel, a single input column through an outer product), so outputs of width
1 are computed as width 2 with a zero row, and a layer with one input declines stacking
(:func:`stack_actors` returns None; the caller runs each policy's module path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch as th
from torch import nn

__all__ = ["ActorProgram", "StackedActor", "actor_program", "stack_actors", "stackable"]

ACTIVATIONS = {nn.Tanh: th.tanh, nn.ReLU: th.relu}
"""Activation layers a program can hold, and the function each applies."""

Step = tuple[str, Any, Any]
"""``("linear", weight [out, in], bias [out])`` or ``("act", function, None)``."""


@dataclass(frozen=True)
class ActorProgram:
    """One policy's actor as plain steps: the layers of its four parts, in order."""

    account: tuple[Step, ...]  # account MLP: [.., A] -> [.., H]
    policy: tuple[Step, ...]  # policy MLP on [encoding | account]: [.., D + H] -> [.., L]
    log_sigma: tuple[Step, ...]  # [.., L] -> [.., act], squashed into log_std_range
    action: tuple[Step, ...]  # [.., L] -> [.., act]
    encoding_dim: int  # D: the actor reads encoded[..., :D]
    log_std_range: tuple[float, float]

    def shapes(self) -> tuple[Any, ...]:
        """What two programs must share to be stacked: layer kinds and weight shapes."""
        parts = (self.account, self.policy, self.log_sigma, self.action)
        return (
            tuple(tuple((s[0], tuple(s[1].shape) if s[0] == "linear" else s[1]) for s in p)
                  for p in parts),
            self.encoding_dim,
            self.log_std_range,
        )


def actor_program(modules: Sequence[nn.Module], encoding_dim: int,
                  log_std_range: tuple[float, float]) -> ActorProgram | None:
    """The :class:`ActorProgram` of the account, policy, log-sigma and action modules.

    None when a part is not a stack of ``Linear`` and ``Tanh``/``ReLU`` layers.
    """
    programs = []
    for module in modules:
        layers = list(module) if isinstance(module, nn.Sequential) else [module]
        steps: list[Step] = []
        for layer in layers:
            if type(layer) is nn.Linear:
                bias = layer.bias if layer.bias is not None else th.zeros_like(layer.weight[:, 0])
                steps.append(("linear", layer.weight.detach(), bias.detach()))
            elif type(layer) in ACTIVATIONS:
                steps.append(("act", ACTIVATIONS[type(layer)], None))
            else:
                return None
        programs.append(tuple(steps))
    account, policy, log_sigma, action = programs
    return ActorProgram(account, policy, log_sigma, action, int(encoding_dim),
                        (float(log_std_range[0]), float(log_std_range[1])))


class StackedActor:
    """``S`` policies' actors in one call: ``[S, K, D], [S, K, A] -> mean, log_sigma``.

    Build it with :func:`stack_actors`. The weights are copied when it is built: take a
    new one after they change.
    """

    def __init__(self, programs: Sequence[ActorProgram]) -> None:
        first = programs[0]
        self.n_policies = len(programs)
        self.encoding_dim = first.encoding_dim
        self.lo, self.hi = first.log_std_range

        def stack(part: str) -> list[tuple[Any, ...]]:
            steps = []
            for i, step in enumerate(getattr(first, part)):
                if step[0] == "act":
                    steps.append(step)
                    continue
                weight = th.stack([getattr(p, part)[i][1] for p in programs])  # [S, out, in]
                bias = th.stack([getattr(p, part)[i][2] for p in programs])  # [S, out]
                out = weight.shape[1]
                if out == 1:  # width 2 with a zero row: see the module docstring
                    weight = th.cat([weight, th.zeros_like(weight)], dim=1)
                    bias = th.cat([bias, th.zeros_like(bias)], dim=1)
                # [S, in, out'] and [S, 1, out'] as baddbmm takes them
                steps.append(("linear", weight.transpose(1, 2).contiguous(), bias[:, None], out))
            return steps

        self._account, self._policy = stack("account"), stack("policy")
        self._log_sigma, self._action = stack("log_sigma"), stack("action")

    @staticmethod
    def _run(steps: list[tuple[Any, ...]], x: th.Tensor) -> th.Tensor:
        for step in steps:
            if step[0] == "act":
                x = step[1](x)
            else:
                x = th.baddbmm(step[2], x, step[1])  # [S, K, out']
                if x.shape[-1] != step[3]:
                    x = x[..., : step[3]]
        return x

    def __call__(self, encoded: th.Tensor, account: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Mean and log-sigma of every policy's actor.

        Args:
            encoded: ``[S, K, >= D]`` bar encodings, policy ``s``'s in row ``s``.
            account: ``[S, K, A]`` account observations.

        Returns:
            ``(mean [S, K, act], log_sigma [S, K, act])``.
        """
        d = self.encoding_dim
        features = th.cat([encoded[..., :d], self._run(self._account, account.float())], dim=-1)
        latent = self._run(self._policy, features)  # [S, K, L]
        log_sigma = self.lo + (self.hi - self.lo) * th.sigmoid(self._run(self._log_sigma, latent))
        return self._run(self._action, latent), log_sigma


def stackable(programs: Sequence[ActorProgram | None]) -> bool:
    """Whether :func:`stack_actors` can stack ``programs``: every program exists, all have
    the same layer kinds and shapes, their weights live on one device with one dtype, and
    no linear layer has a single input."""
    if not programs or any(p is None for p in programs):
        return False
    shapes = programs[0].shapes()
    if any(p.shapes() != shapes for p in programs[1:]):
        return False
    tensors = [
        step[1]
        for p in programs
        for part in (p.account, p.policy, p.log_sigma, p.action)
        for step in part
        if step[0] == "linear"
    ]
    return len({(t.device, t.dtype) for t in tensors}) <= 1 and all(
        t.shape[1] >= 2 for t in tensors
    )


def stack_actors(programs: Sequence[ActorProgram | None]) -> StackedActor | None:
    """One :class:`StackedActor` for ``programs``, or None if they are not :func:`stackable`."""
    return StackedActor(programs) if stackable(programs) else None
