"""Profile of one equal-work PPO gradient step of the reference encoder, part by part.

Builds ``eurusd_ppo.yaml``'s agent (reference plan, 9 layers, d_model 64, encoder window
16, receptive field 46, segment_len 64) with SB3's PPO work (8 envs x 256 steps, minibatch
64), collects one rollout and runs the gradient steps of one epoch the way
``MLKVPPO.train`` runs them, timing each part on the process CPU clock (1 thread):

* **forward**: ``evaluate_actions`` on the minibatch's segments and the PPO loss;
* **backward**: ``loss.backward()``;
* **zero + clip**: zeroing the gradients and grad-norm clipping (one op each on the flat
  gradient buffer where the policy has one, else SB3's per-tensor calls);
* **adam**: the optimiser step.

It also counts the ATen ops one step dispatches (forward, backward), which unlike times do
not depend on the machine's load. Report: the minimum over ``--repeats`` epochs of the
mean per step (the least disturbed epoch on a shared machine) and the median.

Run it on two checkouts to compare (the script only uses what both have)::

    PYTHONPATH=. python experiments/studies/bench/update_profile.py --repeats 5

``--compiled`` instead measures what ``torch.compile`` (inductor, static shapes) would buy:
the forward and backward of the same minibatches' PPO loss (segment encoding from the
gathered bars, heads, Gaussian log-prob and entropy, clipped surrogate, value loss),
eager and compiled, alternating epochs, after checking that the two give the same loss;
plus the one-off compile time (30-70 s on a CPU core). ``ppo.compile_update`` is this
compile in the real update::

    PYTHONPATH=. python experiments/studies/bench/update_profile.py --compiled --repeats 3
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eurusd_ppo.yaml"
PARTS = ("forward", "backward", "zero + clip", "adam")


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def build() -> Any:
    """The equal-work agent after one rollout (advantages normalised as ``train`` does)."""
    from experiments.config import load_config
    from experiments.factory import build_agent, load_split, make_venv

    cfg = load_config(CONFIG)
    cfg = replace(cfg, ppo=replace(cfg.ppo, n_steps=2048 // cfg.n_envs, batch_size=64))
    model = build_agent(cfg, make_venv(load_split(cfg.data).train, cfg))
    _, callback = model._setup_learn(2048)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    return model


def step(model: Any, data: Any, flat: th.Tensor | None, times: dict[str, float]) -> None:
    """One gradient step as ``MLKVPPO.train`` takes it, its parts timed into ``times``."""
    policy, clock = model.policy, time.process_time
    t0 = clock()
    values, log_prob, entropy = policy.evaluate_actions(data.observations, data.actions)
    ratio = th.exp(log_prob - data.old_log_prob)
    adv = data.advantages
    policy_loss = -th.min(adv * ratio, adv * th.clamp(ratio, 0.8, 1.2)).mean()
    value_loss = F.mse_loss(data.returns, values.flatten())
    loss = policy_loss - model.ent_coef * entropy.mean() + model.vf_coef * value_loss
    t1 = clock()
    if flat is None:
        policy.optimizer.zero_grad()
    else:
        flat.zero_()
    t2 = clock()
    loss.backward()
    t3 = clock()
    if flat is None:
        th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
    else:
        with th.no_grad():
            norm = th.linalg.vector_norm(flat)
            flat.mul_((model.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
    t4 = clock()
    policy.optimizer.step()
    t5 = clock()
    for part, dt in zip(PARTS, (t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3), t5 - t4), strict=True):
        times[part] += dt


def segment_loss(model: Any) -> Any:
    """``(x [S, ctx + L, F], account, actions, old_log_prob, advantages, returns) -> loss``:
    the fast update's loss on whole segments, as tensors only (no numpy: one graph)."""
    policy = model.policy
    encoder, ctx = policy.features_extractor.encoder, policy.receptive_field - 1
    d = policy.encoding_dim

    def loss(
        x: th.Tensor,
        account: th.Tensor,
        actions: th.Tensor,
        old_log_prob: th.Tensor,
        advantages: th.Tensor,
        returns: th.Tensor,
    ) -> th.Tensor:
        encoded = encoder.encode_series(x, outputs_from=ctx).reshape(-1, d)  # [M, D]
        mean, log_sigma, values = policy.heads_from_encoded(encoded, account)
        normal = th.distributions.Normal(mean, log_sigma.exp(), validate_args=False)
        log_prob, entropy = normal.log_prob(actions).sum(-1), normal.entropy().sum(-1)
        ratio = th.exp(log_prob - old_log_prob)
        policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 0.8, 1.2)).mean()
        value_loss = F.mse_loss(returns, values.flatten())
        return policy_loss - model.ent_coef * entropy.mean() + model.vf_coef * value_loss

    return loss


def compiled_comparison(model: Any, batches: list[Any], repeats: int) -> str:
    """Eager vs compiled forward + backward of :func:`segment_loss`, ms per step (CPU)."""
    from agents.extractor import span_bars

    ctx = model.policy.receptive_field - 1
    inputs = []
    for data in batches:
        obs = data.observations
        longest = int(np.max(obs.lengths))
        if np.any(np.asarray(obs.lengths) != longest):
            continue  # whole segments only: one static shape
        x = span_bars(obs.features, obs.starts, ctx, longest)  # [S, ctx + L, F]
        inputs.append((x, obs.account, data.actions, data.old_log_prob, data.advantages,
                       data.returns))
    eager = segment_loss(model)
    compiled = th.compile(eager, dynamic=False, options={"cpp_wrapper": True})  # as shipped
    t0 = time.perf_counter()
    compiled(*inputs[0]).backward()
    compile_s = time.perf_counter() - t0
    assert th.allclose(compiled(*inputs[0]), eager(*inputs[0]), rtol=1e-4, atol=1e-5)

    def epoch(fn: Any) -> float:
        t = time.process_time()
        for args in inputs:
            model.policy.optimizer.zero_grad()
            fn(*args).backward()
        return 1e3 * (time.process_time() - t) / len(inputs)

    runs: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        runs["eager"].append(epoch(eager))
        runs["compiled"].append(epoch(compiled))
    e, c = min(runs["eager"]), min(runs["compiled"])
    return (
        f"forward + backward of the segment loss, {len(inputs)} minibatches, min of {repeats} "
        f"alternating epochs: eager {e:.2f} ms, compiled {c:.2f} ms per step ({e / c:.2f}x); "
        f"compile {compile_s:.0f} s once"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: PYTHONPATH=. python experiments/studies/bench/update_profile.py",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs (32 steps each)")
    ap.add_argument("--label", default="", help="a label for the output line")
    ap.add_argument("--compiled", action="store_true", help="eager vs torch.compile'd loss")
    args = ap.parse_args()
    th.set_num_threads(1)
    model = build()
    policy = model.policy
    policy.set_training_mode(True)
    flat = policy.flat_grads() if hasattr(policy, "flat_grads") else None
    np.random.seed(0)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
    batches = list(model.rollout_buffer.get(model.batch_size))
    if args.compiled:
        print(compiled_comparison(model, batches, args.repeats))
        return
    warm = {p: 0.0 for p in PARTS}
    for data in batches[:8]:
        step(model, data, flat, warm)
    epochs = []
    for _ in range(args.repeats):
        times = {p: 0.0 for p in PARTS}
        for data in batches:
            step(model, data, flat, times)
        epochs.append({p: 1e3 * t / len(batches) for p, t in times.items()})
    best = min(epochs, key=lambda e: sum(e.values()))
    totals = [sum(e.values()) for e in epochs]
    fwd, bwd = OpCounter(), OpCounter()
    data = batches[0]
    with fwd:
        values, log_prob, entropy = policy.evaluate_actions(data.observations, data.actions)
        loss = values.sum() + log_prob.sum() + entropy.sum()
    with bwd:
        loss.backward()
    parts = ", ".join(f"{p} {best[p]:.2f}" for p in PARTS)
    print(
        f"{args.label or 'this checkout'}: {parts}; total {sum(best.values()):.2f} ms per step "
        f"(min of {args.repeats} epochs; median {float(np.median(totals)):.2f}); ATen ops per "
        f"step: forward {sum(fwd.ops.values())}, backward {sum(bwd.ops.values())}; "
        f"{np.mean([len(b.observations.lengths) for b in batches]):.2f} segments per minibatch"
    )


if __name__ == "__main__":
    main()
