"""Encoder benchmark: MLKVEncoder vs ``torch.nn.TransformerEncoder``, side by side, one run.

The baseline is what an SB3 user would write (see ``shared/anchors/anchor_cpu.py`` and
``anchor_gpu.py``): ``nn.TransformerEncoder`` (pre-norm, full causal multi-head attention,
every layer its own K/V) recomputing the whole ``T``-bar window at every bar. Both run in
the same process on the same machine, so the *ratios* are what to read; absolute figures
on a shared CPU are noisy.

Figures:

(a) bars/s to encode every bar of a 6k-bar series: ``encode_series`` vs the baseline
    recomputing each ``T = 128`` window (target >= 100x), and vs a baseline whose window
    equals our receptive field;
(b) training forward + backward, windows/s at ``T = 128``: ``forward`` on windows (and,
    as the agent trains, ``encode_series`` on 128-bar segments with receptive-field
    context, counted as windows) vs the baseline;
(c) streaming ``step``: latency at batch 1 and env-steps/s at batch 1024 vs the baseline
    recomputing the window;
(d) KV-cache bytes per environment, MHA vs the reference MLKV plan (1/12 by formula);
(e) a product-key memory layer (``models.ProductKeyMemory``, n_keys = 512: 262,144 value
    slots) vs a dense MLP with the same *active* parameters per token, d 128: tokens/s for
    inference and for training forward + backward (dense and sparse value gradients), and
    peak memory of each (CPU: peak RSS of a fresh child process above its RSS before the
    call; CUDA: ``torch.cuda.max_memory_allocated``).

On CUDA (when a GPU is present) the same figures run with the ``anchor_gpu.py`` sizes
(d 128, 4 layers, 8 heads, 16 features) in fp32 and bf16 autocast at batch 4096.

Usage::

    python -m experiments.studies.bench.encoder_bench             # CPU (2 threads), CUDA if present
    python -m experiments.studies.bench.encoder_bench --quick     # smaller, for a smoke run
    python -m experiments.studies.bench.encoder_bench --json out.json
    python -m experiments.studies.bench.encoder_bench --figures pkm --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import (
    EncoderConfig,
    KVSharingPlan,
    MLKVEncoder,
    PKMConfig,
    ProductKeyMemory,
    cache_bytes,
)


@dataclass
class Row:
    """One line of the result table."""

    figure: str
    ours: str
    ours_value: float
    baseline: str
    baseline_value: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours_value / self.baseline_value
        return self.baseline_value / self.ours_value


# ---------------------------------------------------------------- timing
#: clock of :func:`paired_best`: wall time (``perf_counter``) or this process's CPU time
#: (``process_time``, robust to other load on a shared machine, meaningful at 1 thread).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def paired_best(
    ours: Callable[[], object], base: Callable[[], object], reps: int, inner: int = 3
) -> tuple[float, float]:
    """Best times of ``ours`` and ``base``, measured alternately in the same ``reps`` rounds.

    On a shared machine the load changes from minute to minute; alternating the two (with
    ``inner`` runs of the fast one per round) exposes both to the same conditions, so their
    ratio stays meaningful even when the absolute figures drift.
    """
    ours()
    base()
    t_ours = t_base = float("inf")
    for _ in range(reps):
        for _ in range(inner):
            t0 = _clock()
            ours()
            t_ours = min(t_ours, _clock() - t0)
        t0 = _clock()
        base()
        t_base = min(t_base, _clock() - t0)
    return t_ours, t_base


def cuda_time(fn: Callable[[], object], reps: int, warm: int = 3) -> float:
    """Median CUDA-event time in seconds (as in ``anchor_gpu.py``)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------- baselines
def anchor_encoder(d: int, layers: int, heads: int) -> nn.TransformerEncoder:
    """``tf_encode``'s model from ``anchor_cpu.py``: pre-norm, no dropout, 4x MLP."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d, heads, 4 * d, batch_first=True, norm_first=True, dropout=0.0
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class GpuBaseline(nn.Module):
    """``anchor_gpu.py``'s baseline: input projection, learned positions, TransformerEncoder."""

    def __init__(self, n_features: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, d)
        self.enc = anchor_encoder(d, layers, heads)
        self.pos = nn.Parameter(torch.zeros(1, 512, d))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # [B, T, F] -> [B, D]
        T = obs.shape[1]
        h = self.inp(obs) + self.pos[:, :T]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=obs.device)
        return self.enc(h, mask=mask, is_causal=True)[:, -1]


def baseline_encode(T: int, d: int, layers: int, heads: int, n_bars: int) -> Callable[[], None]:
    """``anchor_cpu.tf_encode``: every bar's ``T``-window recomputed, 256 windows a call.

    Returns:
        A function encoding ``n_bars`` bars (call it under ``torch.inference_mode()``).
    """
    enc = anchor_encoder(d, layers, heads).eval()
    x = torch.randn(n_bars + T, d)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    wins = x.unfold(0, T, 1)[:n_bars].permute(0, 2, 1).contiguous()  # [n_bars, T, d]

    def run() -> None:
        for i in range(0, n_bars, 256):
            enc(wins[i : i + 256], mask=mask, is_causal=True)

    return run


# ---------------------------------------------------------------- CPU figures
def cpu_figures(args: argparse.Namespace) -> list[Row]:
    d, layers, heads, n_feat = 64, 4, 4, 16
    T = 128
    rows: list[Row] = []
    n_series = args.n_bars
    n_base = min(args.n_bars, args.baseline_bars)
    plans = {
        "MLKV-2 (1 KV head), W=64": (KVSharingPlan.mlkv(layers, heads, 1, 2), 64),
        "MLKV-1 (1 KV head), W=128": (KVSharingPlan.mlkv(layers, heads, 1, 1), 128),
        "MHA, W=32": (KVSharingPlan.mha(layers, heads), 32),
    }
    # (a) encode a whole series, each plan paired with the baseline at T and at its rf
    x = torch.randn(n_series, n_feat)
    for label, (plan, W) in plans.items():
        torch.manual_seed(0)
        enc = MLKVEncoder(EncoderConfig(n_feat, d, plan, W)).eval()
        rf = enc.receptive_field
        for t_base_window in dict.fromkeys((T, rf)):  # T, then rf if it differs
            run_base = baseline_encode(t_base_window, d, layers, heads, n_base)
            with torch.inference_mode():
                t_ours, t_base = paired_best(
                    lambda enc=enc: enc.encode_series(x), run_base, min(args.reps, 3)
                )
            name = f"T={T}" if t_base_window == T else f"T=rf={rf}"
            rows.append(
                Row(
                    f"(a) encode {n_series} bars",
                    f"{label} (rf {rf})",
                    n_series / t_ours,
                    f"TransformerEncoder {name}",
                    n_base / t_base,
                    "bars/s",
                )
            )

    # (b) training forward + backward on T-bar windows
    B = args.train_batch
    base = anchor_encoder(d, layers, heads).train()
    inp = nn.Linear(n_feat, d)  # give the baseline the same input projection for training
    xb = torch.randn(B, T, n_feat)
    mask = nn.Transformer.generate_square_subsequent_mask(T)

    def base_step() -> None:
        base.zero_grad(set_to_none=True)
        base(inp(xb), mask=mask, is_causal=True)[:, -1].square().mean().backward()

    for label, (plan, W) in plans.items():
        torch.manual_seed(0)
        enc = MLKVEncoder(EncoderConfig(n_feat, d, plan, W)).train()

        def win_step(enc: MLKVEncoder = enc) -> None:
            enc.zero_grad(set_to_none=True)
            enc(xb)[:, -1].square().mean().backward()

        t_ours, t_base = paired_best(win_step, base_step, args.reps, inner=1)
        rows.append(
            Row(
                f"(b) train fwd+bwd, T={T}, B={B}",
                f"{label}: forward(windows)",
                B / t_ours,
                f"TransformerEncoder T={T}",
                B / t_base,
                "windows/s",
            )
        )
        # the agent's update: segments of S bars + (rf - 1) bars of context, one pass
        S = 128
        n_seg = max(1, B // S)
        seg = torch.randn(n_seg, S + enc.receptive_field - 1, n_feat)

        def seg_step(enc: MLKVEncoder = enc, seg: torch.Tensor = seg, S: int = S) -> None:
            enc.zero_grad(set_to_none=True)
            enc.encode_series(seg)[:, -S:].square().mean().backward()

        t_ours, t_base = paired_best(seg_step, base_step, args.reps, inner=2)
        rows.append(
            Row(
                f"(b) train fwd+bwd, T={T}, B={B}",
                f"{label}: encode_series({S}-bar segments)",
                n_seg * S / t_ours,
                f"TransformerEncoder T={T}",
                B / t_base,
                "windows/s",
            )
        )

    # (c) streaming step vs recomputing the window
    base.eval()
    plan, W = plans["MLKV-2 (1 KV head), W=64"]
    torch.manual_seed(0)
    enc = MLKVEncoder(EncoderConfig(n_feat, d, plan, W)).eval()
    for n_env in (1, args.step_batch):
        n_steps = 64 if n_env == 1 else 8
        xs = torch.randn(n_steps, n_env, n_feat)
        win = torch.randn(n_env, T, d)
        with torch.inference_mode():
            cache = enc.new_cache(n_env)

            def ours_steps(cache=cache, xs=xs) -> None:
                for t in range(xs.shape[0]):
                    enc.step(xs[t], cache)

            n_base_steps = 16 if n_env == 1 else 1  # the baseline is slow at many envs

            def base_steps(win=win, n=n_base_steps) -> None:
                for _ in range(n):
                    base(win, mask=mask, is_causal=True)[:, -1]

            t_ours, t_base = paired_best(ours_steps, base_steps, min(args.reps, 3))
            t_ours, t_base = t_ours / n_steps, t_base / n_base_steps
        if n_env == 1:
            rows.append(
                Row(
                    "(c) step latency, batch 1",
                    "MLKV-2 step (KV cache)",
                    t_ours * 1e3,
                    f"TransformerEncoder window T={T}",
                    t_base * 1e3,
                    "ms/step",
                    higher_is_better=False,
                )
            )
        else:
            rows.append(
                Row(
                    f"(c) step throughput, batch {n_env}",
                    "MLKV-2 step (KV cache)",
                    n_env / t_ours,
                    f"TransformerEncoder window T={T}",
                    n_env / t_base,
                    "env-steps/s",
                )
            )

    # (d) KV-cache bytes per environment (fp32, one window of W=64 bars)
    W, hd = 64, 64 // 8
    ref, mha = KVSharingPlan.reference(), KVSharingPlan.mha(9, 8)
    measured = MLKVEncoder(EncoderConfig(n_feat, 64, ref, W)).new_cache(1).nbytes
    assert measured == cache_bytes(ref, hd, 1, W, torch.float32)
    rows.append(
        Row(
            "(d) KV cache per env (fp32, W=64, d 64)",
            "reference MLKV-3 (6 KV heads)",
            measured,
            "MHA 9x8 (72 KV heads)",
            cache_bytes(mha, hd, 1, W, torch.float32),
            "bytes",
            higher_is_better=False,
        )
    )
    return rows


# ---------------------------------------------------------------- PKM figures
#: the memory of figure (e): 512^2 = 262,144 slots; at d 128 each token scores 2 x 2 x 512
#: sub-keys of 32 dims and reads 2 x 32 value rows: ~90k active parameters
PKM_BENCH = PKMConfig(n_keys=512, k=32, heads=2, k_dim=64)
PKM_D = 128
ROOT = Path(__file__).resolve().parents[3]


def make_pkm(d: int, sparse_grad: bool = False, device: str = "cpu") -> ProductKeyMemory:
    """The memory of figure (e)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(PKM_BENCH, sparse_grad=sparse_grad)
    with torch.device(device):
        return ProductKeyMemory.from_config(d, cfg)


def make_mlp(d: int) -> nn.Sequential:
    """A GELU MLP whose parameters equal the active parameters of :func:`make_pkm`'s memory."""
    active = make_pkm(d, device="meta").active_params  # no table allocated
    hidden = round((active - d) / (2 * d + 1))  # 2 d h + h + d parameters
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))


def pkm_call(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """``infer``: forward under inference_mode; ``train``: forward + backward."""

    def infer() -> None:
        with torch.inference_mode():
            module(x)

    def train() -> None:
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()

    return infer if mode == "infer" else train


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


def peak_rss_child(kind: str, mode: str, sparse_grad: bool, tokens: int, threads: int) -> None:
    """Run in a fresh process: print the peak RSS (bytes) one call adds above the RSS before it.

    Linux keeps the peak RSS (``VmHWM``); writing ``5`` to ``/proc/self/clear_refs`` resets
    it to the current RSS just before the call. A fresh process, because in a warm one the
    allocator serves the call from memory freed earlier and the RSS does not move.
    """
    torch.set_num_threads(threads)
    module = make_pkm(PKM_D, sparse_grad) if kind == "pkm" else make_mlp(PKM_D)
    x = torch.randn(tokens, PKM_D)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_status_bytes("VmRSS")
    pkm_call(module, x, mode)()
    print(json.dumps({"peak": _proc_status_bytes("VmHWM") - before}))


def cpu_peak_bytes(kind: str, mode: str, sparse_grad: bool, tokens: int, threads: int) -> int:
    """:func:`peak_rss_child` in a fresh interpreter (Linux only)."""
    code = (
        "from experiments.studies.bench.encoder_bench import peak_rss_child; "
        f"peak_rss_child({kind!r}, {mode!r}, {sparse_grad}, {tokens}, {threads})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def pkm_figures(args: argparse.Namespace, device: str) -> list[Row]:
    """(e) PKM layer vs a dense MLP of the same active parameters, on ``device``."""
    d, n = PKM_D, args.pkm_tokens if device == "cpu" else args.pkm_tokens_cuda
    rows: list[Row] = []
    x = torch.randn(n, d, device=device)
    for mode, sparse_grad in (("infer", False), ("train", False), ("train", True)):
        mem, mlp = make_pkm(d, sparse_grad).to(device), make_mlp(d).to(device)
        active = mem.active_params
        mlp_params = sum(p.numel() for p in mlp.parameters())
        total = sum(p.numel() for p in mem.parameters())
        grad = {"infer": "", "train": " dense grad" if not sparse_grad else " sparse grad"}[mode]
        what = "inference fwd" if mode == "infer" else f"train fwd+bwd,{grad}"
        ours = f"PKM {PKM_BENCH.n_slots:,} slots ({total / 1e6:.1f}M params, {active:,} active)"
        base = f"MLP {d}-{mlp[0].out_features}-{d} ({mlp_params:,} params)"
        f_mem, f_mlp = pkm_call(mem, x, mode), pkm_call(mlp, x, mode)
        if device == "cpu":
            t_mem, t_mlp = paired_best(f_mem, f_mlp, args.reps, inner=1)
            m_mem = cpu_peak_bytes("pkm", mode, sparse_grad, n, torch.get_num_threads())
            m_mlp = cpu_peak_bytes("mlp", mode, sparse_grad, n, torch.get_num_threads())
        else:
            t_mem, t_mlp = cuda_time(f_mem, 20), cuda_time(f_mlp, 20)
            m_mem, m_mlp = cuda_peak_bytes(f_mem), cuda_peak_bytes(f_mlp)
        tag = "" if device == "cpu" else "GPU "
        fig = f"(e) {tag}{what}, {n:,} tokens, d {d}"
        rows.append(Row(fig, ours, n / t_mem, base, n / t_mlp, "tokens/s"))
        rows.append(
            Row(fig + ", peak memory", ours, m_mem, base, m_mlp, "bytes", higher_is_better=False)
        )
    return rows


def cuda_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak CUDA memory one call allocates above what was allocated before it."""
    fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


# ---------------------------------------------------------------- CUDA figures
def cuda_figures(args: argparse.Namespace) -> list[Row]:
    """``anchor_gpu.py`` sizes: d 128, 4 layers, 8 heads, 16 features, B = 4096."""
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    n_feat, d, layers, heads, T, B = 16, 128, 4, 8, 128, 4096
    rows: list[Row] = []
    base = GpuBaseline(n_feat, d, layers, heads).to(dev)
    plan, W = KVSharingPlan.mlkv(layers, heads, 2, 2), 64
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        torch.manual_seed(0)
        cfg = EncoderConfig(n_feat, d, plan, W, autocast_bf16=bf16, compile=args.compile)
        enc = MLKVEncoder(cfg).to(dev)
        obs = torch.randn(B, T, n_feat, device=dev)

        def base_train(obs=obs, bf16=bf16) -> None:
            base.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                y = base(obs)
            y.float().square().mean().backward()

        def ours_train(obs=obs, enc=enc) -> None:
            enc.zero_grad(set_to_none=True)
            enc(obs)[:, -1].float().square().mean().backward()

        rows.append(
            Row(
                f"(b) GPU train fwd+bwd T={T} B={B} {tag}",
                "MLKV-2 W=64 forward",
                B / cuda_time(ours_train, 10),
                "TransformerEncoder",
                B / cuda_time(base_train, 10),
                "windows/s",
            )
        )
        # (a) whole-series encoding vs windows
        n = args.n_bars
        xs = torch.randn(n, n_feat, device=dev)
        wins = torch.randn(1024, T, n_feat, device=dev)
        with torch.inference_mode():
            t_ours = cuda_time(lambda enc=enc, xs=xs: enc.encode_series(xs), 10)

            def base_wins(wins=wins, bf16=bf16) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    base(wins)

            t_base = cuda_time(base_wins, 10) / wins.shape[0]
        rows.append(
            Row(
                f"(a) GPU encode {n} bars {tag}",
                "MLKV-2 encode_series",
                n / t_ours,
                f"TransformerEncoder T={T}, 1024 windows/call",
                1 / t_base,
                "bars/s",
            )
        )
        # (c) rollout: step with cache vs recomputing windows
        for n_env in (1, 64, 1024):
            x_t = torch.randn(n_env, n_feat, device=dev)
            o = torch.randn(n_env, T, n_feat, device=dev)
            with torch.inference_mode():
                cache = enc.new_cache(n_env)
                t_ours = cuda_time(lambda enc=enc, x_t=x_t, cache=cache: enc.step(x_t, cache), 30)

                def base_roll(o=o, bf16=bf16) -> None:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                        base(o)

                t_base = cuda_time(base_roll, 30)
            rows.append(
                Row(
                    f"(c) GPU rollout {n_env} envs {tag}",
                    "MLKV-2 step",
                    n_env / t_ours,
                    f"TransformerEncoder T={T}",
                    n_env / t_base,
                    "env-steps/s",
                )
            )
    return rows


# ---------------------------------------------------------------- output
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return (
        f"{cpu}; {gpu}; torch {torch.__version__}; python {platform.python_version()}; "
        f"{torch.get_num_threads()} threads; {_clock.__name__} clock; load average {load}"
    )


def ratio(x: float) -> str:
    """``336.2`` -> ``336.2``, ``0.0371`` -> ``0.037``: small ratios keep two digits."""
    return f"{x:,.1f}" if x >= 1 else f"{x:.2g}"


def table(rows: list[Row]) -> str:
    out = [
        "| figure | ours | value | baseline | value | unit | ratio (ours / baseline) |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for r in rows:
        note = "" if r.higher_is_better else " (smaller is better; baseline/ours)"
        out.append(
            f"| {r.figure} | {r.ours} | {r.ours_value:,.4g} | {r.baseline} | "
            f"{r.baseline_value:,.4g} | {r.unit} | **{ratio(r.ratio)}x**{note} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m experiments.studies.bench.encoder_bench --threads 2 "
        "--json bench.json",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--n-bars", type=int, default=6144, help="series length for (a)")
    p.add_argument(
        "--baseline-bars",
        type=int,
        default=1024,
        help="bars the (slow) baseline encodes to measure its bars/s",
    )
    p.add_argument("--train-batch", type=int, default=256, help="windows per training step (CPU)")
    p.add_argument("--step-batch", type=int, default=1024, help="envs for step throughput")
    p.add_argument("--reps", type=int, default=5, help="timings per figure (best is kept)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCK),
        default="wall",
        help="CPU timings: wall time, or process CPU time (robust to other load; use with "
        "--threads 1)",
    )
    p.add_argument("--compile", default=None, help="torch.compile mode for the CUDA run")
    p.add_argument(
        "--figures",
        choices=("all", "encoder", "pkm"),
        default="all",
        help="encoder figures (a)-(d), the product-key memory figure (e), or all",
    )
    p.add_argument("--pkm-tokens", type=int, default=4096, help="tokens per call in (e), CPU")
    p.add_argument(
        "--pkm-tokens-cuda", type=int, default=65536, help="tokens per call in (e), CUDA"
    )
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.n_bars, args.baseline_bars, args.train_batch = 1024, 256, 32
        args.step_batch, args.reps, args.pkm_tokens = 64, 2, 512
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCK[args.clock]
    print(f"machine: {machine()}")
    rows: list[Row] = []
    encoder, pkm = args.figures in ("all", "encoder"), args.figures in ("all", "pkm")
    if args.device in ("cpu", "all"):
        cpu_rows = (cpu_figures(args) if encoder else []) + (
            pkm_figures(args, "cpu") if pkm else []
        )
        print("\nCPU\n" + table(cpu_rows))
        rows += cpu_rows
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            gpu_rows = (cuda_figures(args) if encoder else []) + (
                pkm_figures(args, "cuda") if pkm else []
            )
            print("\nCUDA\n" + table(gpu_rows))
            rows += gpu_rows
        else:
            print("\nCUDA: skipped (no GPU available)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine(), "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows]},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
