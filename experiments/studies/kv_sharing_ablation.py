"""KV-sharing ablation: memory vs prediction quality of MHA, GQA, MQA, CLA-2 and MLKV.

The evidence, in this domain, that the MLKV paper (arXiv 2406.09297) gives for language:
how much prediction quality each KV-sharing plan gives up for its KV-cache savings, at the
history length a strategy needs. Every plan has the same width, depth and query heads
(9 layers, 8 query heads, ``d_model`` 32) and is compared in two settings:

* **equal receptive field** (``--rf``, default 91 bars): each plan gets the window
  ``W = (rf - 1) / n_kv_layers + 1`` (MHA/GQA/MQA 11, CLA-2 19, MLKV-3 31, MLKV-1 91), so
  every plan sees the same history and only the cache layout differs;
* **equal window** (``--window``, default 11): every plan gets the same ``W``, so the
  receptive field ``n_kv_layers (W - 1) + 1`` shrinks with the KV layers (91, 51, 31, 11
  bars). Runs whose ``W`` is the same in both settings (MHA, GQA, MQA) are trained once.

KV-cache bytes per environment are what the streaming ``KVCache`` holds: ``W`` bars x the
per-token bytes (``cache_bytes(plan, head_dim, 1, W, fp32)``).

Each run trains one predictor (1 seed in the quick preset, 3 with ``--full``):

* features per bar (causal, scale-free): log return, log(high/open), log(low/open),
  log(close/open), each divided by an EWMA volatility known at the bar, and the clipped
  log volume change;
* targets (:data:`TARGETS`): ``ret``, the next bar's log return over that volatility scale,
  and on real markets also ``vol``, the next bar's *absolute* log return over the same scale
  (volatility clusters, so it is predictable). A market with two targets trains one
  encoder with one linear head per target on the sum of their losses;
* loss: mean squared error of the standardised target, reported as validation MSE relative
  to the best constant known from the training part (``ret``: predicting 0, so an AR(1)
  market allows ``1 - phi^2`` and the echo market ``1 - coef^2``; ``vol``: predicting the
  training mean). ``1.0`` = no skill;
* markets (:func:`market`): ``echo`` (``data.synthetic.echo``, 20,000 bars, each return
  echoes the one 48 bars back with coefficient 0.5: only a receptive field >= 48 can get
  below 1.0, and the limit is 0.75), the embedded ``eurusd`` H1 2017 and ``googl`` daily
  2009-2018 candles, and ``ar1`` (phi 0.3, needs one lag); each split chronologically
  (``data.splits``, 70/15/15 with an embargo), validation = the middle part;
* training: AdamW on random contiguous segments encoded with ``encode_series``, each
  with ``receptive_field - 1`` bars of context (as the agent trains), so every scored bar
  sees all the history its plan can see; validation encodes the whole validation part
  once and scores the same bars (all but the first ``max receptive field - 1``) for every
  run.

A second table puts a sparse **product-key memory** (``models.ProductKeyMemory``) in
place of the MLP of the middle layer (4 of 9) of the reference MLKV-3 plan, sized to the
same *active* parameters per token as the MLP it replaces (:data:`PKM`: 2 heads x 32 slots
read from 64^2 = 4,096, ~8.4k active vs 8.4k), and reports parameters, active parameters
and FLOPs per token, parameter and KV-cache memory, the validation loss and how evenly the
value slots are read on the validation part (equal-window setting only).

Two presets size a study (:class:`Preset`; options given explicitly override them):

* the **quick** default (:data:`QUICK`): the echo market, both settings, 1 seed, 150 steps,
  9 runs. It answers the question on the long-memory market (rf < 48 stays at 1.0, the
  one-hop MLKV-1 at rf 91 reaches 0.761). Measured with ``--jobs 2`` (the default) on the
  shared 2-core CPU (Intel Xeon, KVM guest): **78 s of wall time** at a load average of
  1.3-2.1, 190 s while other users kept it at 2.5-3.8;
* ``--full`` (:data:`FULL`): echo, EURUSD and GOOGL, 3 seeds, 300 / 100 steps, 81 runs:
  the tables in ``docs/mlkv.md`` (roughly 25-30 minutes of wall time with ``--jobs 2``).

Usage::

    python -m experiments.studies.kv_sharing_ablation                # quick: 9 runs, 1-3 min
    python -m experiments.studies.kv_sharing_ablation --full --write-docs        # 81 runs
    python -m experiments.studies.kv_sharing_ablation --markets echo --compare rf --seeds 5
    python -m experiments.studies.kv_sharing_ablation --full --device cuda --steps 2000 --jobs 1
    python -m experiments.studies.kv_sharing_ablation --full --variants memory \\
        --markets ar1,eurusd --compare w --window 8 --steps 80 --write-docs  # PKM table

``--write-docs`` replaces the block between the ablation markers in ``docs/mlkv.md`` (when
every KV-sharing plan ran) and writes the plot to ``docs/mlkv_ablation.png``, and the block
between the memory-ablation markers (when the reference and its PKM variant ran).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from data.datasets import load
from data.splits import chronological_split
from data.synthetic import ar1, echo
from models import EncoderConfig, KVSharingPlan, MLKVEncoder, PKMConfig, cache_bytes

N_LAYERS, N_HEADS = 9, 8

#: label -> plan; all with 9 layers and 8 query heads
PLANS: dict[str, KVSharingPlan] = {
    "MHA": KVSharingPlan.mha(N_LAYERS, N_HEADS),
    "GQA-2": KVSharingPlan.gqa(N_LAYERS, N_HEADS, 2),
    "MQA": KVSharingPlan.mqa(N_LAYERS, N_HEADS),
    "CLA-2 (GQA-2)": KVSharingPlan.cla(N_LAYERS, N_HEADS, 2, 2),
    "MLKV-3 (reference)": KVSharingPlan.reference(),
    "MLKV-1 (GQA-2)": KVSharingPlan.mlkv(N_LAYERS, N_HEADS, 2, 1),
}

#: product-key memory of the memory variant: 64^2 = 4,096 slots, 2 heads x 32 slots read.
#: At d_model 32 its active parameters per token (query 2,112 + LayerNorm 128 + sub-keys
#: 4,096 + values read 2,048 = 8,384) equal the replaced MLP's (8,352).
PKM = PKMConfig(n_keys=64, k=32, heads=2, k_dim=32)
REFERENCE = "MLKV-3 (reference)"
MEMORY_LABEL = "MLKV-3 + PKM (layer 4)"

#: label -> (plan, memory layers): the KV-sharing plans, then the memory variant
VARIANTS: dict[str, tuple[KVSharingPlan, tuple[int, ...]]] = {
    **{label: (plan, ()) for label, plan in PLANS.items()},
    MEMORY_LABEL: (KVSharingPlan.reference(), (N_LAYERS // 2,)),
}

FEATURES = ("ret", "high", "low", "body", "dlogvol")
#: market -> targets predicted on it (one head each)
TARGETS: dict[str, tuple[str, ...]] = {
    "echo": ("ret",),
    "ar1": ("ret",),
    "eurusd": ("ret", "vol"),
    "googl": ("ret", "vol"),
}
#: the echo market: lag 48, coefficient 0.5 (Bayes limit 1 - 0.5^2 = 0.75)
ECHO = {"lag": 48, "coef": 0.5, "vol": 0.002}
SETTINGS = {"rf": "equal receptive field", "w": "equal window"}
SYNTHETIC = ("echo", "ar1")
DOCS = Path(__file__).resolve().parents[2] / "docs"
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
MEM_BEGIN, MEM_END = "<!-- memory-ablation:begin -->", "<!-- memory-ablation:end -->"


@dataclass(frozen=True)
class Preset:
    """Defaults of the options that set a study's size; options given explicitly win."""

    markets: str  # comma list of markets (keys of TARGETS)
    compare: str  # "rf" (equal receptive field), "w" (equal window) or "rf,w"
    seeds: int  # seeds per plan and market (seeds 0 .. seeds - 1)
    steps: int  # optimiser steps per run on the synthetic markets (echo, ar1)
    real_steps: int  # optimiser steps per run on the real markets (eurusd, googl)

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "real_steps"):
            if getattr(self, name) < 1:
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} must be >= 1, got {getattr(self, name)}")

    def describe(self) -> str:
        """The preset in one line, e.g. for ``--help``."""
        return (
            f"markets {self.markets}, compare {self.compare}, {self.seeds} seed(s), "
            f"{self.steps} synthetic / {self.real_steps} real steps"
        )


#: the no-argument run: both settings on the echo market, one seed, 150 steps. Its 9 runs
#: (MHA, GQA and MQA have the same W in both settings) answer the question on the long-memory
#: market in 1-3 minutes on 2 CPU cores: rf < 48 stays at 1.0 and the one-hop MLKV-1 at
#: rf 91 gets to ~0.76 (optimum 0.75). 150 steps suffice for that (seeds 0-2: 0.760-0.761),
#: not for the multi-hop plans, which --full's 300 steps separate further
QUICK = Preset(markets="echo", compare="rf,w", seeds=1, steps=150, real_steps=100)
#: ``--full``: the study behind the tables in docs/mlkv.md, 3 markets x 9 runs x 3 seeds = 81
FULL = Preset(markets="echo,eurusd,googl", compare="rf,w", seeds=3, steps=300, real_steps=100)


# ---------------------------------------------------------------- data
def candle_features(candles: pd.DataFrame, halflife: float = 48.0) -> pd.DataFrame:
    """Causal, scale-free per-bar features and the next-bar targets.

    Args:
        candles: ``open high low close volume`` with a DatetimeIndex.
        halflife: EWMA half-life in bars of the volatility scale.

    Returns:
        Frame with the :data:`FEATURES` columns, ``target`` (next bar's log return over
        this bar's volatility) and ``target_vol`` (its absolute value); the last bar, whose
        targets are unknown, is dropped.
    """
    o, h, lo, c, v = (
        candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    ret = np.diff(np.log(c), prepend=np.log(o[0]))
    # EWMA of squared returns up to and including bar t (pandas ewm is causal)
    scale = np.sqrt(pd.Series(ret**2).ewm(halflife=halflife, adjust=True).mean().to_numpy())
    scale = np.maximum(scale, 1e-8)
    dlogvol = np.diff(np.log(np.maximum(v, 1e-12)), prepend=np.log(max(v[0], 1e-12)))
    nxt = np.append(ret[1:], np.nan) / scale
    out = pd.DataFrame(
        {
            "ret": ret / scale,
            "high": np.log(h / o) / scale,
            "low": np.log(lo / o) / scale,
            "body": np.log(c / o) / scale,
            "dlogvol": dlogvol,
            "target": nxt,
            "target_vol": np.abs(nxt),
        },
        index=candles.index,
    ).clip(-10.0, 10.0)
    return out.iloc[:-1]


def market(name: str, ar_phi: float = 0.3) -> pd.DataFrame:
    """Candles of one market of the ablation."""
    if name == "echo":
        return echo(20_000, seed=0, **ECHO)
    if name == "ar1":
        return ar1(20_000, phi=ar_phi, vol=0.002, seed=0)
    if name == "eurusd":
        return load("eurusd_h1")
    if name == "googl":
        return load("googl_d1")
    raise ValueError(f"unknown market {name!r}; use {', '.join(TARGETS)}.")


@dataclass
class Parts:
    """Feature/target tensors of the train and validation parts; targets standardised."""

    x_train: torch.Tensor  # [N_train, F]
    y_train: torch.Tensor  # [N_train, n_targets]
    x_val: torch.Tensor  # [N_val, F]
    y_val: torch.Tensor  # [N_val, n_targets]
    targets: tuple[str, ...]


def split_market(candles: pd.DataFrame, targets: tuple[str, ...] = ("ret",)) -> Parts:
    """Split chronologically and standardise each target by its training part.

    ``ret`` is divided by its root mean square (so predicting 0 scores 1.0); ``vol`` has
    its training mean subtracted, then is divided by its standard deviation (so predicting
    the training mean scores ~1.0).
    """
    feats = candle_features(candles)
    split = chronological_split(feats, (0.7, 0.15, 0.15))
    cols = {"ret": "target", "vol": "target_vol"}

    def t(df: pd.DataFrame, names) -> torch.Tensor:
        return torch.tensor(df[list(names)].to_numpy(np.float32))

    names = [cols[k] for k in targets]
    y_train, y_val = t(split.train, names), t(split.validation, names)
    for j, k in enumerate(targets):
        shift = y_train[:, j].mean() if k == "vol" else torch.tensor(0.0)
        scale = (y_train[:, j] - shift).square().mean().sqrt()
        y_train[:, j] = (y_train[:, j] - shift) / scale
        y_val[:, j] = (y_val[:, j] - shift) / scale
    return Parts(t(split.train, FEATURES), y_train, t(split.validation, FEATURES), y_val, targets)


# ---------------------------------------------------------------- model
class Predictor(nn.Module):
    """MLKV encoder + one linear head per target: bar ``t``'s encoding -> next-bar targets."""

    def __init__(self, config: EncoderConfig, n_targets: int = 1) -> None:
        super().__init__()
        self.encoder = MLKVEncoder(config)
        self.head = nn.Linear(config.d_model, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, F] -> [B, N, n_targets]
        return self.head(self.encoder.encode_series(x))


def flops_per_token(encoder: MLKVEncoder) -> int:
    """Encoder FLOPs (2 x multiply-adds) per token with a sliding window of ``W`` keys.

    Counts the input projection, Q/K/V/output projections (K/V at owner layers only),
    ``q.k`` and ``p.v`` over the ``W`` keys of the window, the MLPs and the memories'
    :attr:`~models.ProductKeyMemory.flops_per_token`; not norms, softmax or activations.
    (The block kernel evaluates ``2W`` keys per query, half of them masked.)
    """
    cfg = encoder.config
    D, W, plan = cfg.d_model, cfg.window, cfg.plan
    flops = 2 * cfg.n_features * D
    for i, block in enumerate(encoder.blocks):
        flops += 2 * D * D + 2 * D * D  # query and output projections
        if plan.kv_source[i] == i:
            flops += 2 * D * 2 * plan.n_kv_heads * cfg.head_dim  # K/V projection
        flops += 2 * 2 * plan.n_heads * cfg.head_dim * W  # scores and weighted values
        if block.memory is None:
            flops += 2 * 2 * D * cfg.mlp_ratio * D
        else:
            flops += block.memory.flops_per_token
    return flops


def active_params(encoder: MLKVEncoder) -> int:
    """Parameters one token uses: all, less the value rows of the memories it does not read."""
    total = sum(p.numel() for p in encoder.parameters())
    for mem in encoder.memories.values():
        total -= sum(p.numel() for p in mem.parameters()) - mem.active_params
    return total


def window_for(plan: KVSharingPlan, rf: int) -> int:
    """The window ``W`` that gives ``plan`` the receptive field ``rf``: ``(rf - 1) / m + 1``."""
    m = plan.n_kv_layers
    if (rf - 1) % m:
        raise ValueError(
            f"--rf {rf}: rf - 1 = {rf - 1} is not a multiple of a plan's {m} KV layers; "
            "pick rf - 1 divisible by 9, 5, 3 and 1 (e.g. 46, 91, 136)."
        )
    return (rf - 1) // m + 1


def train_one(
    label: str, window: int, parts: Parts, seed: int, args: argparse.Namespace, steps: int
) -> dict:
    """Train one predictor for ``steps`` steps; return its validation loss per target etc."""
    plan, memory_layers = VARIANTS[label]
    device = torch.device(args.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = EncoderConfig(
        len(FEATURES),
        args.d_model,
        plan,
        window,
        dropout=0.0,
        rope_base=args.rope_base,
        memory_layers=memory_layers,
        memory=PKM if memory_layers else None,
    )
    model = Predictor(cfg, len(parts.targets)).to(device)
    x_train, y_train = parts.x_train.to(device), parts.y_train.to(device)
    x_val, y_val = parts.x_val.to(device), parts.y_val.to(device)
    share_init = None
    if memory_layers:  # usage on the validation part before any training
        model.eval()
        with torch.inference_mode():
            model(x_val[None])
        share_init = next(iter(model.encoder.memory_usage(reset=True).values())).slot_share
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    ctx = model.encoder.receptive_field - 1 if args.context is None else args.context
    S = args.segment
    starts_max = x_train.shape[0] - (ctx + S)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, starts_max + 1, (args.batch,), generator=gen)  # [B]
        idx = (starts[:, None] + torch.arange(ctx + S)).to(device)  # [B, ctx + S]
        pred = model(x_train[idx])[:, ctx:]  # [B, S, n_targets]
        loss = (pred - y_train[idx][:, ctx:]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    model.eval()
    model.encoder.reset_memory_usage()  # usage on the validation part only
    with torch.inference_mode():
        skip = args.score_skip  # same scored bars for every run
        pred = model(x_val[None])[0, skip:]  # [N_val - skip, n_targets]
        y = y_val[skip:]
        rel = ((pred - y).square().mean(0) / y.square().mean(0)).cpu().tolist()
    usage = list(model.encoder.memory_usage().values())
    return {
        "val": dict(zip(parts.targets, rel, strict=True)),
        "steps": steps,
        "score_skip": skip,
        "train_s": train_s,
        "window": window,
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "active_params": active_params(model.encoder),
        "flops_per_token": flops_per_token(model.encoder),
        "receptive_field": model.encoder.receptive_field,
        "kv_bytes_token": cache_bytes(plan, cfg.head_dim, 1, 1, torch.float32),
        "kv_bytes_env": cache_bytes(plan, cfg.head_dim, 1, window, torch.float32),
        "slot_share_init": share_init,
        "slot_share": usage[0].slot_share if usage else None,
        "read_entropy_ratio": usage[0].read_entropy_ratio if usage else None,
    }


def _run(job: tuple) -> dict:
    """One training job in a worker process: ``(market, label, window, seed, parts, args)``."""
    m, label, window, seed, parts, args = job
    torch.set_num_threads(args.threads)
    steps = args.steps if m in SYNTHETIC else args.real_steps
    r = train_one(label, window, parts, seed, args, steps)
    return {"market": m, "plan": label, "seed": seed, **r}


# ---------------------------------------------------------------- report
def columns(markets: list[str]) -> list[tuple[str, str]]:
    """(market, target) pairs, one table column each."""
    return [(m, k) for m in markets for k in TARGETS[m]]


def rows_for(results: list[dict], label: str, window: int) -> list[dict]:
    return [r for r in results if r["plan"] == label and r["window"] == window]


def loss_stats(rows: list[dict], market: str, target: str) -> tuple[float, float, int]:
    """Mean, sd and number of seeds of the validation loss of ``rows`` on one market/target."""
    v = np.array([r["val"][target] for r in rows if r["market"] == market])
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def loss_cells(rows: list[dict], cols: list[tuple[str, str]], n_seeds: int) -> list[str]:
    """``mean +- sd`` of the validation loss over seeds, one cell per market/target (just the
    loss when one seed ran: no spread); a cell with fewer than ``n_seeds`` seeds says how
    many it has (a study cut short)."""
    cells = []
    for c in cols:
        m, s, n = loss_stats(rows, *c)
        if n == 0:
            cells.append("not run")
            continue
        spread = f" +- {s:.4f}" if n > 1 else ""
        cells.append(f"{m:.4f}{spread}" + (f" (n={n})" if n < n_seeds else ""))
    return cells


def col_name(market: str, target: str) -> str:
    return f"{market} {target}"


def kv_windows(args: argparse.Namespace, setting: str) -> dict[str, int]:
    """label -> window of the KV-sharing plans in one setting (``rf`` or ``w``)."""
    if setting == "rf":
        return {label: window_for(plan, args.rf) for label, plan in PLANS.items()}
    return dict.fromkeys(PLANS, args.window)


def settings_line(args: argparse.Namespace, markets: list[str]) -> str:
    head_dim = args.d_model // N_HEADS
    ctx = "receptive field - 1" if args.context is None else args.context
    return (
        f"Settings: d_model {args.d_model}, {N_LAYERS} layers, {N_HEADS} query heads (head_dim "
        f"{head_dim}), rotary base {args.rope_base:g}, {args.steps_text} AdamW steps (peak lr "
        f"{args.lr}) of {args.batch} segments x "
        f"{args.segment} bars (+ {ctx} bars of context), {len(args.seed_list)} seed(s), device "
        f"{args.device}, {args.threads} torch thread(s) per process. Validation "
        "loss = MSE / MSE of the best training constant (ret: 0, vol: training mean), mean +- "
        "sd over seeds; 1.0 = no skill"
        + (
            f"; echo (lag {ECHO['lag']}, coef {ECHO['coef']}) optimum "
            f"{1 - ECHO['coef'] ** 2:.2f} with rf >= {ECHO['lag']}, 1.0 below"
            if "echo" in markets
            else ""
        )
        + (f"; AR(1) optimum 1 - phi^2 = {1 - args.phi**2:.3f}" if "ar1" in markets else "")
        + f". Every run is scored on the same validation bars (all but the first "
        f"{args.score_skip}). KV bytes/env = W x bytes/token (fp32, the streaming cache of one "
        "environment)."
    )


def markdown(results: list[dict], args: argparse.Namespace, markets: list[str]) -> str:
    cols = columns(markets)
    lines = [settings_line(args, markets)]
    mha = PLANS["MHA"]
    for setting in args.compare:
        windows = kv_windows(args, setting)
        mha_env = cache_bytes(mha, args.d_model // N_HEADS, 1, windows["MHA"], torch.float32)
        title = (
            f"receptive field {args.rf} bars" if setting == "rf" else f"window W = {args.window}"
        )
        lines += [
            "",
            f"**{SETTINGS[setting].capitalize()}** ({title}):",
            "",
            "| plan | KV heads | KV layers | params | W | receptive field | KV bytes/token | "
            "KV bytes/env | vs MHA | train s/run | "
            + " | ".join(col_name(*c) for c in cols)
            + " |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cols),
        ]
        head_dim = args.d_model // N_HEADS
        for label, plan in PLANS.items():
            rows = rows_for(results, label, windows[label])
            w = windows[label]
            env_bytes = cache_bytes(plan, head_dim, 1, w, torch.float32)
            params = f"{rows[0]['params']:,}" if rows else "-"
            train_s = f"{np.mean([r['train_s'] for r in rows]):.1f}" if rows else "-"
            lines.append(
                f"| {label} | {plan.total_kv_heads} | {plan.n_kv_layers} | {params} | {w} | "
                f"{plan.n_kv_layers * (w - 1) + 1} | "
                f"{cache_bytes(plan, head_dim, 1, 1, torch.float32):,} | {env_bytes:,} | "
                f"{env_bytes / mha_env:.3f} | {train_s} | "
                + " | ".join(loss_cells(rows, cols, len(args.seed_list)))
                + " |"
            )
    lines += [
        "",
        f"Total training time: {sum(r['train_s'] for r in results):.0f} s "
        f"({len(results)} runs); wall time {args.wall_s:.0f} s. Machine: {args.machine}.",
    ]
    if command := getattr(args, "command", None):  # results files from before lack it
        lines += ["", f"Command: `{command}`."]
    return "\n".join(lines)


def memory_markdown(results: list[dict], args: argparse.Namespace, markets: list[str]) -> str:
    """The reference plan vs the same plan with a product-key memory in the middle layer."""
    cols = columns(markets)
    lines = [
        f"Settings as above (d_model {args.d_model}, window {args.window}, {args.steps_text} "
        f"steps, {len(args.seed_list)} seeds, {args.threads} CPU thread(s)). Memory: layer "
        f"{VARIANTS[MEMORY_LABEL][1][0]}'s MLP replaced by `PKMConfig(n_keys={PKM.n_keys}, "
        f"k={PKM.k}, heads={PKM.heads}, k_dim={PKM.k_dim})` ({PKM.n_slots:,} value slots). "
        "Active params = parameters one token uses (all sub-keys, only the value rows it "
        "reads); FLOPs = 2 x multiply-adds of the encoder per token (window of W keys; norms, "
        "softmax, top-k not counted). Slot share (at init -> after training) and read entropy "
        "(over log(slots), 1 = even; after training) are measured on each market's validation "
        "part, mean over seeds.",
        "",
        "| variant | params | active params / token | FLOPs / token | param memory (fp32) | "
        "KV cache bytes/token | value slots | slot share | read entropy ratio | train s/run | "
        + " | ".join(f"val loss {col_name(*c)}" for c in cols)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cols),
    ]
    for label in (REFERENCE, MEMORY_LABEL):
        rows = rows_for(results, label, args.window)
        layers = VARIANTS[label][1]
        if layers:
            share, ratio = [], []
            for m in markets:
                rm = [r for r in rows if r["market"] == m]
                before, after = (
                    np.mean([r[f] for r in rm]) for f in ("slot_share_init", "slot_share")
                )
                share.append(f"{m} {before:.3f} -> {after:.3f}")
                ratio.append(f"{m} {np.mean([r['read_entropy_ratio'] for r in rm]):.3f}")
            share, ratio = "<br>".join(share), "<br>".join(ratio)
            slots = f"{PKM.n_slots:,}"
        else:
            share = ratio = slots = "-"
        r0 = rows[0]
        lines.append(
            f"| {label} | {r0['params']:,} | {r0['active_params']:,} | "
            f"{r0['flops_per_token']:,} | {r0['params'] * 4 / 1024:,.0f} KiB | "
            f"{r0['kv_bytes_token']:,} | {slots} | {share} | "
            f"{ratio} | {np.mean([r['train_s'] for r in rows]):.1f} | "
            + " | ".join(loss_cells(rows, cols, len(args.seed_list)))
            + " |"
        )
    return "\n".join(lines)


def plot(groups: list[tuple[argparse.Namespace, list[dict]]], path: Path) -> None:
    """Validation loss vs KV bytes per environment, one line per market/target, per setting.

    ``groups``: (arguments, results) of one or more invocations (e.g. one per market).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(s in a.compare for a, _ in groups)]
    n = len(settings)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.6), squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings, strict=True):
        titles = []
        for args, results in groups:
            if setting not in args.compare:
                continue
            windows = kv_windows(args, setting)
            markets = list(dict.fromkeys(r["market"] for r in results))
            titles.append(
                f"rf {args.rf}" if setting == "rf" else f"W {args.window}: {', '.join(markets)}"
            )
            for c in columns(markets):
                pts = []
                for label in PLANS:
                    rows = rows_for(results, label, windows[label])
                    mean, sd, n = loss_stats(rows, *c)
                    if n:
                        pts.append((rows[0]["kv_bytes_env"], mean, sd, label))
                pts.sort()
                x, y, e = (np.array([p[i] for p in pts]) for i in range(3))
                line = ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=col_name(*c))
                if c[0] == "echo":
                    for xi, yi, _, label in pts:
                        ax.annotate(
                            label.split(" ")[0], (xi, yi), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", color=line[0].get_color(),
                        )  # fmt: skip
            if "echo" in markets:
                ax.axhline(1 - ECHO["coef"] ** 2, ls="--", c="grey", lw=1, label="echo optimum")
        ax.axhline(1.0, ls=":", c="k", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("KV-cache bytes per environment (W x bytes/token, fp32, log scale)")
        ax.set_title(f"{SETTINGS[setting]} ({'; '.join(dict.fromkeys(titles))})", fontsize=9)
    axes[0][0].set_ylabel("validation MSE / MSE(best constant)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


#: arguments a results file's ``.meta`` keeps, to render it again with ``--merge``
META = (
    "compare", "rf", "window", "phi", "seed_list", "batch", "segment", "context", "d_model",
    "lr", "rope_base", "device", "threads", "score_skip", "machine", "wall_s", "command",
)  # fmt: skip


def steps_text(results: list[dict]) -> str:
    """Optimiser steps per run, per market when they differ."""
    markets = list(dict.fromkeys(r["market"] for r in results))
    steps = {m: sorted({r["steps"] for r in results if r["market"] == m}) for m in markets}
    if len({tuple(v) for v in steps.values()}) == 1:
        return "/".join(map(str, next(iter(steps.values()))))
    return ", ".join(f"{m} {'/'.join(map(str, v))}" for m, v in steps.items())


def write_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between ``begin`` and ``end`` in ``docs/mlkv.md`` with ``text``."""
    doc = DOCS / "mlkv.md"
    body = doc.read_text() if doc.exists() else f"# MLKV\n\n{begin}\n{end}\n"
    if begin not in body or end not in body:
        body += f"\n{begin}\n{end}\n"
    pre, rest = body.split(begin, 1)
    _, post = rest.split(end, 1)
    doc.write_text(f"{pre}{begin}\n{text}\n{end}{post}")


def machine() -> str:
    """One line naming the CPU (or GPU), cores and the python/torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {multiprocessing.cpu_count()} cores{gpu}; python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; the :class:`Preset` options default to ``None`` (unset)."""
    p = argparse.ArgumentParser(
        description="KV-sharing ablation: params, KV-cache bytes and next-bar validation loss "
        "of MHA/GQA/MQA/CLA-2/MLKV plans at equal receptive field and at equal window, on a "
        "long-memory synthetic market and on EURUSD/GOOGL (return and volatility targets). "
        f"Without options it runs the quick preset ({QUICK.describe()}); --full runs the "
        f"study behind docs/mlkv.md ({FULL.describe()}). Options given explicitly override "
        "the preset.",
        epilog="examples: python -m experiments.studies.kv_sharing_ablation  # quick;  "
        "python -m experiments.studies.kv_sharing_ablation --full --jobs 2 --write-docs",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the full study (the docs' tables) instead of the quick default preset",
    )

    def preset_help(text: str, name: str) -> str:
        return f"{text} (quick: {getattr(QUICK, name)}; --full: {getattr(FULL, name)})"

    p.add_argument(
        "--markets",
        default=None,
        help=preset_help(f"comma list of {', '.join(TARGETS)}", "markets"),
    )
    p.add_argument(
        "--variants",
        default="kv",
        help="kv (the KV-sharing plans), memory (reference and reference + PKM), all, or a "
        f"comma list of labels: {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--compare",
        default=None,
        help=preset_help("rf (equal receptive field), w (equal window) or both", "compare"),
    )
    p.add_argument("--rf", type=int, default=91, help="receptive field of the equal-rf setting")
    p.add_argument("--window", type=int, default=11, help="window W of the equal-W setting")
    p.add_argument("--phi", type=float, default=0.3, help="AR(1) coefficient of the ar1 market")
    p.add_argument(
        "--seeds", type=int, default=None, help=preset_help("seeds per plan and market", "seeds")
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=preset_help("optimiser steps per run on synthetic markets", "steps"),
    )
    p.add_argument(
        "--real-steps",
        type=int,
        default=None,
        help=preset_help("optimiser steps per run on eurusd/googl", "real_steps"),
    )
    p.add_argument("--batch", type=int, default=8, help="segments per step")
    p.add_argument("--segment", type=int, default=64, help="scored bars per segment")
    p.add_argument(
        "--context", type=int, default=None, help="context bars per segment; default rf - 1"
    )
    p.add_argument("--d-model", type=int, default=32, help="model width (8 heads)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument(
        "--rope-base",
        type=float,
        default=100.0,
        help="rotary base; 100 gives head_dim 4 the frequencies 1 and 0.1 rad/bar (10,000: 0.01)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--jobs", type=int, default=2, help="runs trained in parallel (processes)")
    p.add_argument("--write-docs", action="store_true", help="update docs/mlkv.md and the plot")
    p.add_argument(
        "--score-skip",
        type=int,
        default=None,
        help="validation bars left unscored; default: the largest receptive field - 1",
    )
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="train nothing: render (and --write-docs) the results of earlier --json files, "
        "e.g. one per market; pass the same --compare/--rf/--window as those runs",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; fill unset :class:`Preset` options from the preset.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The parsed options plus ``preset`` (the resolved :class:`Preset`), ``market_list``,
        ``labels`` (variants), ``seed_list``, ``runs`` (``(label, window)`` of every run
        per market and seed), ``score_skip`` and ``command`` (the command line, for the docs).

    Raises:
        SystemExit: with a message naming the option, for an invalid command line.
    """
    p = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "-m", "experiments.studies.kv_sharing_ablation", *argv])
    base = FULL if args.full else QUICK
    chosen = {f.name: getattr(args, f.name) for f in fields(Preset)}
    try:
        args.preset = replace(base, **{k: v for k, v in chosen.items() if v is not None})
    except ValueError as err:
        p.error(str(err))
    for f in fields(Preset):
        setattr(args, f.name, getattr(args.preset, f.name))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here; use --device cpu")
    args.market_list = [m.strip() for m in args.markets.split(",") if m.strip()]
    if bad := [m for m in args.market_list if m not in TARGETS]:
        p.error(f"--markets: unknown {bad}; use {', '.join(TARGETS)}")
    args.compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    if not args.compare or [c for c in args.compare if c not in SETTINGS]:
        p.error(f"--compare: use rf, w or rf,w; got {args.compare}")
    groups = {"all": list(VARIANTS), "kv": list(PLANS), "memory": [REFERENCE, MEMORY_LABEL]}
    labels = groups.get(args.variants) or [v.strip() for v in args.variants.split(",")]
    if unknown := [v for v in labels if v not in VARIANTS]:
        p.error(
            f"--variants: unknown {unknown}; use all, kv, memory or labels from {list(VARIANTS)}"
        )
    args.labels = labels
    args.seed_list = list(range(args.seeds))
    # (label, window) of every run: KV plans in each setting, the memory variant at equal W
    runs: list[tuple[str, int]] = []
    try:
        for setting in args.compare:
            windows = kv_windows(args, setting)
            runs += [(label, windows[label]) for label in labels if label in PLANS]
    except ValueError as err:
        p.error(str(err))
    if MEMORY_LABEL in labels:
        runs.append((MEMORY_LABEL, args.window))
        if REFERENCE in labels and (REFERENCE, args.window) not in runs:
            runs.append((REFERENCE, args.window))
    args.runs = list(dict.fromkeys(runs))  # trained once when both settings give the same W
    max_rf = max(VARIANTS[label][0].n_kv_layers * (w - 1) + 1 for label, w in args.runs)
    args.score_skip = max_rf - 1 if args.score_skip is None else args.score_skip
    if args.score_skip < max_rf - 1:
        p.error(f"--score-skip must be >= the largest receptive field - 1 = {max_rf - 1}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the ablation (or ``--merge`` earlier results), print and optionally write the docs.

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``); see :func:`build_parser`.

    Returns:
        One dict per run (market, plan, seed, window, validation losses, sizes, timings).
    """
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    markets, labels, runs = args.market_list, args.labels, args.runs
    args.machine = machine()
    t0 = time.perf_counter()
    jobs = []
    results = []
    if args.merge:
        for path in args.merge:
            results += json.loads(Path(path).read_text())
        markets = list(dict.fromkeys(r["market"] for r in results))
    for m in [] if args.merge else markets:
        parts = split_market(market(m, args.phi), TARGETS[m])
        jobs += [(m, label, w, seed, parts, args) for label, w in runs for seed in args.seed_list]
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            for r in pool.map(_run, jobs):
                _record(r, results, args)
    else:
        for job in jobs:
            _record(_run(job), results, args)
    args.wall_s = time.perf_counter() - t0
    groups = [(args, results)]
    if args.merge:  # each file is rendered with the arguments it ran with
        groups = []
        for path in args.merge:
            meta = json.loads(Path(f"{path}.meta").read_text())
            groups.append((argparse.Namespace(**meta), json.loads(Path(path).read_text())))
    texts = []
    for g_args, g_results in groups:
        g_args.steps_text = steps_text(g_results)
        g_markets = list(dict.fromkeys(r["market"] for r in g_results))
        if any(r["plan"] in PLANS for r in g_results):
            texts.append(markdown(g_results, g_args, g_markets))
    all_kv = all(label in labels for label in PLANS)
    has_memory = REFERENCE in labels and MEMORY_LABEL in labels and not args.merge
    text = "\n\n".join(texts)
    args.steps_text = steps_text(results)
    mem_text = memory_markdown(results, args, markets) if has_memory else ""
    print("\n" + text + "\n\n" + mem_text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        meta = {k: getattr(args, k) for k in META}
        Path(f"{args.json}.meta").write_text(json.dumps(meta, indent=2))
    if args.write_docs:
        if all_kv:
            plot(groups, DOCS / "mlkv_ablation.png")
            write_docs(text + "\n\n![KV-cache bytes per env vs validation loss](mlkv_ablation.png)")
        if has_memory:
            write_docs(mem_text, MEM_BEGIN, MEM_END)
    return results


def _record(r: dict, results: list[dict], args: argparse.Namespace) -> None:
    """Keep, print and (with ``--json``) save a finished run, so a cut-short study keeps it."""
    results.append(r)
    _print(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _print(r: dict) -> None:
    losses = ", ".join(f"{k} {v:.4f}" for k, v in r["val"].items())
    print(
        f"{r['market']:7s} {r['plan']:24s} W {r['window']:3d} seed {r['seed']}: {losses} "
        f"({r['train_s']:.1f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
