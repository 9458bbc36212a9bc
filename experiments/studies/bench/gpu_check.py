"""One-command GPU check (``make gpu-check``): the CUDA tests and the GPU figures in one table.

On a machine with CUDA it runs, in under 8 minutes on one GPU:

* the ``cuda``-marked tests (``pytest -m cuda tests/models``);
* encoder training forward + backward at ``T = 128``, ``B = 4096`` in fp32 and bf16 vs
  ``torch.nn.TransformerEncoder`` (the ``shared/anchors/anchor_gpu.py`` baseline: d 128, 4
  layers, 8 heads, 16 features, learned positions, full causal attention); target >= 2x.
  Ours is ``forward`` on the windows, and, as the PPO update trains, ``encode_series`` on
  128-bar segments with receptive-field context (counted as the windows they replace);
* ``step`` throughput at 1,024 and 4,096 envs (:class:`models.StreamingEncoder`, one CUDA
  graph per step) vs the baseline recomputing each env's 128-bar window; target >= 10x;
* ``encode_series`` bars/s (256 series of 2,048 bars);
* PPO training FPS on CUDA (``experiments/configs/eurusd_ppo.yaml``, n_envs 256);
* peak CUDA memory and the achieved share of the GPU's bf16 peak for the bf16 training
  figure (FLOPs from ``torch.utils.flop_counter``; the peak is the measured 8192^3 bf16
  matmul rate, and the datasheet figure where the GPU is known).

Without CUDA it says so and exits 0. ``--smoke`` runs every figure on the CPU at toy sizes
(a check of this script, not a measurement).

Usage::

    make gpu-check
    python -m experiments.studies.bench.gpu_check --json gpu.json
    python -m experiments.studies.bench.gpu_check --smoke
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.studies.bench.encoder_bench import GpuBaseline, cuda_time
from models import EncoderConfig, KVSharingPlan, MLKVEncoder, StreamingEncoder

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "experiments" / "configs" / "eurusd_ppo.yaml"

#: datasheet dense bf16 tensor-core peaks (TFLOP/s), by a substring of the device name
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "4090": 165.0}


@dataclass(frozen=True)
class Sizes:
    """Problem sizes (the anchor's on a GPU; toys for ``--smoke``)."""

    n_features: int = 16
    d_model: int = 128
    layers: int = 4
    heads: int = 8
    window: int = 64  # encoder window W; MLKV-2 with 2 KV heads: receptive field 127
    T: int = 128
    batch: int = 4096
    step_envs: tuple[int, ...] = (1024, 4096)
    series: tuple[int, int] = (256, 2048)  # encode_series: [series, bars]
    ppo_envs: int = 256
    ppo_steps: int | None = None  # None: the config's n_steps
    reps: int = 10


SMOKE = Sizes(n_features=16, d_model=32, layers=2, heads=4, window=8, T=16, batch=8,
              step_envs=(4, 8), series=(2, 64), ppo_envs=2, ppo_steps=32, reps=2)


@dataclass
class Row:
    """One line of the table."""

    check: str
    ours: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""

    def status(self) -> str:
        m = re.match(r">= ([\d.]+)x", self.target)
        if self.ratio is None or m is None:
            return ""
        return "met" if self.ratio >= float(m.group(1)) else "**missed**"


# ---------------------------------------------------------------- timing
def timer(device: str) -> Callable[[Callable[[], object], int], float]:
    """Median seconds per call: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def cpu_time(fn: Callable[[], object], reps: int) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    return cuda_time if device == "cuda" else cpu_time  # encoder_bench's CUDA-event timer


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak CUDA memory of one call (0 on the CPU)."""
    if device != "cuda":
        fn()
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def matmul_tflops(device: str, n: int) -> float:
    """Measured bf16 matmul rate (``n x n`` by ``n x n``), TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = timer(device)(lambda: a @ b, 10)
    return 2 * n**3 / t / 1e12


# ---------------------------------------------------------------- figures
def encoder(s: Sizes, device: str, bf16: bool) -> MLKVEncoder:
    torch.manual_seed(0)
    plan = KVSharingPlan.mlkv(s.layers, s.heads, 2, 2)
    cfg = EncoderConfig(s.n_features, s.d_model, plan, s.window, autocast_bf16=bf16)
    return MLKVEncoder(cfg).to(device)


def training_rows(s: Sizes, device: str, peak_tflops: float) -> list[Row]:
    """(b) fwd+bwd at T, B in fp32 and bf16: forward(windows), segments, the baseline."""
    rows = []
    time_it = timer(device)
    base = GpuBaseline(s.n_features, s.d_model, s.layers, s.heads).to(device)
    obs = torch.randn(s.batch, s.T, s.n_features, device=device)
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        enc = encoder(s, device, bf16)
        rf = enc.receptive_field
        n_seg = max(1, s.batch // s.T)
        seg = torch.randn(n_seg, s.T + rf - 1, s.n_features, device=device)

        def base_train(bf16: bool = bf16) -> None:
            base.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                y = base(obs)
            y.float().square().mean().backward()

        def ours_train(enc: MLKVEncoder = enc) -> None:
            enc.zero_grad(set_to_none=True)
            enc(obs)[:, -1].float().square().mean().backward()

        def ours_segments(enc: MLKVEncoder = enc, seg: torch.Tensor = seg) -> None:
            enc.zero_grad(set_to_none=True)
            enc.encode_series(seg)[:, -s.T :].float().square().mean().backward()

        t_base = time_it(base_train, s.reps)
        t_ours = time_it(ours_train, s.reps)
        t_seg = time_it(ours_segments, s.reps)
        rows.append(Row(
            f"train fwd+bwd T={s.T} B={s.batch} {tag}",
            f"forward(windows): {s.batch / t_ours:,.0f} windows/s",
            f"TransformerEncoder: {s.batch / t_base:,.0f} windows/s",
            t_base / t_ours,
            ">= 2x",
        ))
        rows.append(Row(
            f"train fwd+bwd, {n_seg} x {s.T}-bar segments {tag} (the PPO update)",
            f"encode_series: {n_seg * s.T / t_seg:,.0f} windows/s",
            f"TransformerEncoder: {s.batch / t_base:,.0f} windows/s",
            (n_seg * s.T / t_seg) / (s.batch / t_base),
            ">= 2x",
        ))
        if bf16:
            with FlopCounterMode(display=False) as flops:
                ours_train()
            achieved = flops.get_total_flops() / t_ours / 1e12
            mem_ours = peak_bytes(ours_train, device)
            mem_base = peak_bytes(base_train, device)
            name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
            sheet = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
            share = f"{100 * achieved / peak_tflops:.1f}% of the measured bf16 matmul peak " \
                    f"({peak_tflops:,.0f} TFLOP/s)"
            if sheet:
                share += f", {100 * achieved / sheet:.1f}% of the datasheet's {sheet:,.0f}"
            rows.append(Row(f"achieved bf16 throughput, forward(windows) T={s.T} B={s.batch}",
                            f"{achieved:,.1f} TFLOP/s: {share}"))
            rows.append(Row(
                f"peak memory, train fwd+bwd T={s.T} B={s.batch} bf16",
                f"{mem_ours / 2**30:,.2f} GiB",
                f"{mem_base / 2**30:,.2f} GiB",
                mem_base / mem_ours if mem_ours else None,
            ))
    return rows


@torch.inference_mode()
def step_rows(s: Sizes, device: str) -> list[Row]:
    """(c) env-steps/s of a graphed ``step`` vs recomputing the T-bar window (bf16)."""
    rows = []
    time_it = timer(device)
    base = GpuBaseline(s.n_features, s.d_model, s.layers, s.heads).to(device).eval()
    enc = encoder(s, device, bf16=True).eval()
    for n_env in s.step_envs:
        stream = StreamingEncoder(enc, n_env)
        x_t = torch.randn(n_env, s.n_features, device=device)
        wins = torch.randn(n_env, s.T, s.n_features, device=device)

        def base_step(wins: torch.Tensor = wins) -> None:
            with torch.autocast(device, dtype=torch.bfloat16):
                base(wins)

        t_ours = time_it(lambda stream=stream, x_t=x_t: stream(x_t), 3 * s.reps)
        t_base = time_it(base_step, s.reps)
        graph = "CUDA graph" if stream.cuda_graph else "eager"
        rows.append(Row(
            f"step, {n_env:,} envs, bf16",
            f"StreamingEncoder ({graph}): {n_env / t_ours:,.0f} env-steps/s",
            f"TransformerEncoder window T={s.T}: {n_env / t_base:,.0f} env-steps/s",
            t_base / t_ours,
            ">= 10x",
        ))
    return rows


@torch.inference_mode()
def series_rows(s: Sizes, device: str) -> list[Row]:
    """(a) ``encode_series`` bars/s in fp32 and bf16."""
    rows = []
    n_series, n_bars = s.series
    x = torch.randn(n_series, n_bars, s.n_features, device=device)
    for bf16 in (False, True):
        enc = encoder(s, device, bf16).eval()
        t = timer(device)(lambda enc=enc: enc.encode_series(x), s.reps)
        tag = "bf16" if bf16 else "fp32"
        rows.append(Row(f"encode_series, {n_series} x {n_bars:,} bars, {tag}",
                        f"{n_series * n_bars / t:,.0f} bars/s"))
    return rows


def ppo_rows(s: Sizes, device: str) -> list[Row]:
    """PPO training FPS (rollouts + updates) of the eurusd config."""
    from experiments.config import load_config
    from experiments.factory import build_agent, load_split, make_venv

    cfg = load_config(CONFIG)
    ppo = cfg.ppo if s.ppo_steps is None else replace(
        cfg.ppo, n_steps=s.ppo_steps, batch_size=s.ppo_steps
    )
    cfg = replace(cfg, n_envs=s.ppo_envs, device=device, ppo=ppo)
    agent = build_agent(cfg, make_venv(load_split(cfg.data).train, cfg))
    per_iter = cfg.ppo.n_steps * cfg.n_envs
    agent.learn(per_iter)  # warm-up: numba kernels, CUDA context, allocator
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    agent.learn(per_iter, reset_num_timesteps=False)  # one rollout + one update, timed
    if device == "cuda":
        torch.cuda.synchronize()
    fps = per_iter / (time.perf_counter() - t0)
    return [Row(
        f"PPO training FPS, eurusd config, n_envs {cfg.n_envs}, n_steps {cfg.ppo.n_steps}",
        f"{fps:,.0f} env-steps/s (rollouts + {cfg.ppo.n_epochs}-epoch updates)",
    )]


def cuda_test_rows() -> list[Row]:
    """The ``cuda``-marked tests, in a subprocess; the row carries pytest's summary line."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
         "tests/models"],
        cwd=ROOT, capture_output=True, text=True,
    )
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else f"no output (exit {out.returncode})"
    ok = out.returncode in (0, 5)  # 5: none collected
    return [Row("cuda tests (pytest -m cuda tests/models)",
                summary if ok else f"**FAILED**: {summary}")]


def table(rows: list[Row]) -> str:
    out = ["| check | ours | baseline | ratio | target |", "|---|---|---|---:|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"**{r.ratio:,.1f}x**"
        target = f"{r.target} ({r.status()})" if r.target else ""
        out.append(f"| {r.check} | {r.ours} | {r.baseline} | {ratio} | {target} |")
    return "\n".join(out)


def machine(device: str) -> str:
    gpu = torch.cuda.get_device_name() if device == "cuda" else "no GPU (smoke run on the CPU)"
    return f"{gpu}; torch {torch.__version__}; cuda {torch.version.cuda}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m experiments.studies.bench.gpu_check --json gpu.json",
    )
    p.add_argument("--smoke", action="store_true",
                   help="every figure on the CPU at toy sizes (checks the script only)")
    p.add_argument("--skip-tests", action="store_true", help="leave out the cuda tests")
    p.add_argument("--skip-ppo", action="store_true", help="leave out the PPO FPS figure")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.smoke:
        device, sizes = "cpu", SMOKE
    elif torch.cuda.is_available():
        device, sizes = "cuda", Sizes()
        torch.backends.cuda.matmul.allow_tf32 = True  # as the anchor's baseline runs
        torch.backends.cudnn.allow_tf32 = True
    else:
        print("gpu-check: CUDA is not available on this machine; nothing to run (GPU rows "
              "stay 'not run'). Use --smoke to exercise the script on the CPU.")
        return 0
    t0 = time.perf_counter()
    print(f"machine: {machine(device)}", flush=True)
    rows: list[Row] = []
    if not args.skip_tests:
        rows += cuda_test_rows()
    peak = matmul_tflops(device, 8192 if device == "cuda" else 256)
    rows += training_rows(sizes, device, peak)
    rows += step_rows(sizes, device)
    rows += series_rows(sizes, device)
    if not args.skip_ppo:
        rows += ppo_rows(sizes, device)
    print(table(rows))
    print(f"\n({time.perf_counter() - t0:,.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine(device), "rows": [r.__dict__ for r in rows]}, indent=2
        ))
    failed = any("FAILED" in r.ours for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
