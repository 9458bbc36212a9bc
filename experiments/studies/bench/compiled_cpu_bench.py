"""What each compiled-CPU choice of the encoder buys, side by side in one process (1 thread).

The PPO update's ``compile_update`` compiles the encoder for the CPU, where the encoder
takes three paths of its own (``models.encoder`` module doc). This script times each
against the alternative it replaced, alternating the two, and prints ratios:

* **attention**: SDPA vs :func:`models.attention.masked_attention`, 9 calls of the equal-work
  update's block shapes (q ``[2, 6, 64, 8]``, k/v ``[2, 6, 32, 8]``, the band mask), forward
  and backward, compiled (and eager, where SDPA stays);
* **GELU**: ``F.gelu(approximate="tanh")`` vs :class:`models.encoder.TanhGELU`'s sigmoid form,
  40 ``[96, 256]`` activations, forward and backward, compiled;
* **wrapper**: the equal-work update's forward + backward (``evaluate_segments`` of one
  64-step segment, ``update_profile.build``) compiled with inductor's Python wrapper vs its
  C++ wrapper (``compile_update``'s choice), alternating epochs; paired median difference.

Usage (~3 min plus compiles; inductor's cache makes reruns shorter)::

    PYTHONPATH=. python experiments/studies/bench/compiled_cpu_bench.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F

Fn = Callable[..., th.Tensor]


def cpu_us(fn: Callable[[], Any], calls: int) -> float:
    """CPU microseconds per call of ``fn`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    t = time.process_time()
    for _ in range(calls):
        fn()
    return 1e6 * (time.process_time() - t) / calls


def paired(a: Callable[[], Any], b: Callable[[], Any], repeats: int, calls: int) -> tuple:
    """Alternating timings: ``(min a, min b, median of b - a)`` in microseconds per call."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(cpu_us(a, calls))
        tb.append(cpu_us(b, calls))
    return min(ta), min(tb), statistics.median(y - x for x, y in zip(ta, tb, strict=True))


def attention_rows(repeats: int) -> list[tuple[str, float, float, float]]:
    from models.attention import additive_band, masked_attention

    mask = additive_band(16, 4)[:, :32][None, None]  # [1, 1, 64, 32]: the band's shape
    xs = [
        [th.randn(2, 6, n, 8, requires_grad=True) for n in (64, 32, 32)] for _ in range(9)
    ]

    def layers(attend: Fn) -> Fn:
        def run() -> th.Tensor:
            return sum(attend(q, k, v, mask).sum() for q, k, v in xs)

        return run

    def sdpa(q: th.Tensor, k: th.Tensor, v: th.Tensor, m: th.Tensor) -> th.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    rows = []
    for label, wrap in (("eager", lambda f: f), ("compiled", th.compile)):
        runs = [wrap(layers(f)) for f in (sdpa, masked_attention)]
        a, b, d = paired(*(lambda r=r: r().backward() for r in runs), repeats, 10)
        rows.append((f"attention, {label} (SDPA -> plain), per layer", a / 9, b / 9, d / 9))
    return rows


def gelu_rows(repeats: int) -> list[tuple[str, float, float, float]]:
    from models.encoder import TanhGELU

    xs = [th.randn(96, 256, requires_grad=True) for _ in range(40)]
    gelu = TanhGELU()  # compiled for the CPU: its sigmoid form

    def tanh_form() -> th.Tensor:
        return sum(F.gelu(x, approximate="tanh").sum() for x in xs)

    def sigmoid_form() -> th.Tensor:
        return sum(gelu(x).sum() for x in xs)

    runs = [th.compile(f) for f in (tanh_form, sigmoid_form)]
    a, b, d = paired(*(lambda r=r: r().backward() for r in runs), repeats, 10)
    return [("GELU compiled (tanh -> sigmoid form), per [96, 256]", a / 40, b / 40, d / 40)]


def wrapper_rows(repeats: int) -> list[tuple[str, float, float, float]]:
    sys.path.insert(0, str(Path(__file__).parent))
    from update_profile import build

    from agents.extractor import span_bars

    model = build()
    policy = model.policy
    policy.set_training_mode(True)
    np.random.seed(0)  # noqa: NPY002 -- SB3's buffers shuffle with the global RNG
    ctx = policy.receptive_field - 1
    inputs = []
    for data in model.rollout_buffer.get(model.batch_size):
        obs = data.observations
        x = span_bars(obs.features, obs.starts, ctx, int(obs.lengths[0]))
        inputs.append((x, obs.account, data.actions))

    def epoch(fn: Fn) -> Callable[[], None]:
        def run() -> None:
            for args in inputs:
                policy.optimizer.zero_grad()
                values, log_prob, entropy = fn(*args)
                (values.sum() + log_prob.sum() + entropy.sum()).backward()

        return run

    python = th.compile(policy.evaluate_segments, dynamic=False)
    cpp = th.compile(
        lambda *a: policy.evaluate_segments(*a), dynamic=False, options={"cpp_wrapper": True}
    )
    a, b, d = paired(epoch(python), epoch(cpp), repeats, 1)
    n = len(inputs)
    return [("update step compiled (Python -> C++ wrapper)", a / n, b / n, d / n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15, help="alternating timings per pair")
    args = ap.parse_args()
    th.set_num_threads(1)
    th.manual_seed(0)
    rows = attention_rows(args.repeats) + gelu_rows(args.repeats) + wrapper_rows(args.repeats)
    print(f"# torch {th.__version__}, 1 thread, min of {args.repeats} alternating timings (CPU us)")
    print("| what | before | after | after / before | paired median after - before |")
    print("|---|---:|---:|---:|---:|")
    for what, a, b, d in rows:
        print(f"| {what} | {a:,.1f} | {b:,.1f} | {b / a:.2f}x | {d:+,.1f} |")


if __name__ == "__main__":
    main()
