"""KV-sharing ablation: memory vs prediction quality of MHA, GQA, MQA, CLA-2 and MLKV.

The evidence, in this domain, that the MLKV paper (arXiv 2406.09297) gives for language:
how much next-bar prediction quality each KV-sharing plan gives up for its KV-cache
savings. Every plan has the same width, depth and query heads (9 layers, 8 query heads,
``d_model`` 32, window 8) and is trained, with 3 seeds, as a next-bar return predictor:

* features per bar (causal, scale-free): log return, log(high/open), log(low/open),
  log(close/open), each divided by an EWMA volatility known at the bar, and the clipped
  log volume change;
* target: the next bar's log return over the same volatility scale;
* loss: mean squared error; reported as validation MSE relative to predicting 0
  (``1.0`` = no skill; an AR(1) market with coefficient ``phi`` allows ``1 - phi^2``);
* data: (a) ``data.synthetic.ar1`` (a planted, learnable edge) and (b) the embedded
  EURUSD H1 2017 candles; both split chronologically (``data.splits``, 70/15/15 with an
  embargo), validation = the middle part;
* training: AdamW on random contiguous segments encoded with ``encode_series``, each
  with ``receptive_field - 1`` bars of context (as the agent trains), so every scored bar
  sees all the history its plan can see; validation encodes the whole validation part
  once and scores the same bars (all but the first ``max receptive field - 1``) for every
  plan.

A second table puts a sparse **product-key memory** (``models.ProductKeyMemory``) in
place of the MLP of the middle layer (4 of 9) of the reference MLKV-3 plan, sized to the
same *active* parameters per token as the MLP it replaces (:data:`PKM`: 2 heads x 32 slots
read from 64^2 = 4,096, ~8.4k active vs 8.4k), and reports parameters, active parameters
and FLOPs per token, parameter and KV-cache memory, the validation loss and how evenly the
value slots are read on the validation part.

Usage::

    python -m experiments.studies.kv_sharing_ablation                 # defaults: a few minutes
    python -m experiments.studies.kv_sharing_ablation --steps 600 --seeds 5 --write-docs
    python -m experiments.studies.kv_sharing_ablation --variants memory --write-docs  # PKM only

``--write-docs`` replaces the block between the ablation markers in ``docs/mlkv.md`` (when
every KV-sharing plan ran) and writes the plot to ``docs/mlkv_ablation.png``, and the block
between the memory-ablation markers (when the reference and its PKM variant ran).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from data.datasets import load
from data.splits import chronological_split
from data.synthetic import ar1
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
DOCS = Path(__file__).resolve().parents[2] / "docs"
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
MEM_BEGIN, MEM_END = "<!-- memory-ablation:begin -->", "<!-- memory-ablation:end -->"


# ---------------------------------------------------------------- data
def candle_features(candles: pd.DataFrame, halflife: float = 48.0) -> pd.DataFrame:
    """Causal, scale-free per-bar features and the next-bar target.

    Args:
        candles: ``open high low close volume`` with a DatetimeIndex.
        halflife: EWMA half-life in bars of the volatility scale.

    Returns:
        Frame with the :data:`FEATURES` columns and ``target`` (next bar's log return over
        this bar's volatility; NaN on the last bar, which is dropped).
    """
    o, h, lo, c, v = (
        candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")
    )
    ret = np.diff(np.log(c), prepend=np.log(o[0]))
    # EWMA of squared returns up to and including bar t (pandas ewm is causal)
    scale = np.sqrt(pd.Series(ret**2).ewm(halflife=halflife, adjust=True).mean().to_numpy())
    scale = np.maximum(scale, 1e-8)
    dlogvol = np.diff(np.log(np.maximum(v, 1e-12)), prepend=np.log(max(v[0], 1e-12)))
    out = pd.DataFrame(
        {
            "ret": ret / scale,
            "high": np.log(h / o) / scale,
            "low": np.log(lo / o) / scale,
            "body": np.log(c / o) / scale,
            "dlogvol": dlogvol,
            "target": np.append(ret[1:], np.nan) / scale,
        },
        index=candles.index,
    ).clip(-10.0, 10.0)
    return out.iloc[:-1]


def market(name: str, ar_phi: float) -> pd.DataFrame:
    """Candles of one market of the ablation."""
    if name == "ar1":
        return ar1(20_000, phi=ar_phi, vol=0.002, seed=0)
    if name == "eurusd":
        return load("eurusd_h1")
    raise ValueError(f"unknown market {name!r}; use ar1 or eurusd.")


@dataclass
class Parts:
    """Feature/target tensors of the train and validation parts."""

    x_train: torch.Tensor  # [N_train, F]
    y_train: torch.Tensor  # [N_train]
    x_val: torch.Tensor  # [N_val, F]
    y_val: torch.Tensor  # [N_val]


def split_market(candles: pd.DataFrame) -> Parts:
    feats = candle_features(candles)
    split = chronological_split(feats, (0.7, 0.15, 0.15))

    def t(df: pd.DataFrame, cols) -> torch.Tensor:
        return torch.tensor(df[list(cols)].to_numpy(np.float32))

    return Parts(
        t(split.train, FEATURES),
        t(split.train, ["target"])[:, 0],
        t(split.validation, FEATURES),
        t(split.validation, ["target"])[:, 0],
    )


# ---------------------------------------------------------------- model
class Predictor(nn.Module):
    """MLKV encoder + a linear head: bar ``t``'s encoding -> the next bar's scaled return."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = MLKVEncoder(config)
        self.head = nn.Linear(config.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, F] -> [B, N]
        return self.head(self.encoder.encode_series(x))[..., 0]


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


def train_one(label: str, parts: Parts, seed: int, args: argparse.Namespace) -> dict:
    """Train one predictor; return its validation loss and bookkeeping."""
    plan, memory_layers = VARIANTS[label]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = EncoderConfig(
        len(FEATURES),
        args.d_model,
        plan,
        args.window,
        dropout=0.0,
        memory_layers=memory_layers,
        memory=PKM if memory_layers else None,
    )
    model = Predictor(cfg)
    share_init = None
    if memory_layers:  # usage on the validation part before any training
        model.eval()
        with torch.inference_mode():
            model(parts.x_val[None])
        share_init = next(iter(model.encoder.memory_usage(reset=True).values())).slot_share
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    ctx = model.encoder.receptive_field - 1 if args.context is None else args.context
    S = args.segment
    n_train = parts.x_train.shape[0]
    starts_max = n_train - (ctx + S)
    t0 = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        starts = torch.randint(0, starts_max + 1, (args.batch,), generator=gen)  # [B]
        idx = starts[:, None] + torch.arange(ctx + S)  # [B, ctx + S]
        pred = model(parts.x_train[idx])[:, ctx:]  # [B, S]
        loss = (pred - parts.y_train[idx][:, ctx:]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    model.eval()
    model.encoder.reset_memory_usage()  # usage on the validation part only
    with torch.inference_mode():
        skip = args.max_rf - 1  # same scored bars for every plan
        pred = model(parts.x_val[None])[0, skip:]
        y = parts.y_val[skip:]
        rel = float((pred - y).square().mean() / y.square().mean())
    usage = list(model.encoder.memory_usage().values())
    return {
        "val_rel_mse": rel,
        "train_s": train_s,
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "active_params": active_params(model.encoder),
        "flops_per_token": flops_per_token(model.encoder),
        "receptive_field": model.encoder.receptive_field,
        "slot_share_init": share_init,
        "slot_share": usage[0].slot_share if usage else None,
        "read_entropy_ratio": usage[0].read_entropy_ratio if usage else None,
    }


# ---------------------------------------------------------------- report
def loss_cells(results: list[dict], label: str, markets: list[str]) -> list[str]:
    """``mean +- sd`` of the validation loss over seeds, one cell per market."""
    cells = []
    for m in markets:
        v = np.array([r["val_rel_mse"] for r in results if r["plan"] == label and r["market"] == m])
        cells.append(f"{v.mean():.4f} +- {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
    return cells


def markdown(results: list[dict], args: argparse.Namespace, markets: list[str]) -> str:
    head_dim = args.d_model // N_HEADS
    ctx = "receptive field - 1" if args.context is None else args.context
    lines = [
        f"Settings: d_model {args.d_model}, {N_LAYERS} layers, {N_HEADS} query heads (head_dim "
        f"{head_dim}), window {args.window}, {args.steps} AdamW steps of {args.batch} segments "
        f"x {args.segment} bars (+ {ctx} bars of context), {len(args.seed_list)} seeds; "
        f"{args.threads} CPU thread(s). Validation loss = MSE / MSE of predicting 0 "
        f"(mean +- sd over seeds; lower is better, 1.0 = no skill"
        + (f", AR(1) optimum 1 - phi^2 = {1 - args.phi**2:.3f}" if "ar1" in markets else "")
        + ").",
        "",
        "| plan | KV heads total | KV layers | params | KV cache bytes/token (fp32) | "
        "vs MHA | receptive field | " + " | ".join(f"val loss {m}" for m in markets) + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(markets),
    ]
    mha_bytes = cache_bytes(PLANS["MHA"], head_dim, 1, 1, torch.float32)
    for label, plan in PLANS.items():
        rows = [r for r in results if r["plan"] == label]
        if not rows:
            continue
        b = cache_bytes(plan, head_dim, 1, 1, torch.float32)
        cells = loss_cells(results, label, markets)
        lines.append(
            f"| {label} | {plan.total_kv_heads} | {plan.n_kv_layers} | {rows[0]['params']:,} | "
            f"{b:,} | {b / mha_bytes:.3f} | {rows[0]['receptive_field']} | "
            + " | ".join(cells)
            + " |"
        )
    total = sum(r["train_s"] for r in results if r["plan"] in PLANS)
    lines += ["", f"Total training time: {total:.0f} s."]
    return "\n".join(lines)


def memory_markdown(results: list[dict], args: argparse.Namespace, markets: list[str]) -> str:
    """The reference plan vs the same plan with a product-key memory in the middle layer."""
    head_dim = args.d_model // N_HEADS
    lines = [
        f"Settings as above (d_model {args.d_model}, window {args.window}, {args.steps} steps, "
        f"{len(args.seed_list)} seeds, {args.threads} CPU thread(s)). Memory: layer "
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
        + " | ".join(f"val loss {m}" for m in markets)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(markets),
    ]
    for label in (REFERENCE, MEMORY_LABEL):
        rows = [r for r in results if r["plan"] == label]
        plan, layers = VARIANTS[label]
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
            f"{cache_bytes(plan, head_dim, 1, 1, torch.float32):,} | {slots} | {share} | "
            f"{ratio} | {np.mean([r['train_s'] for r in rows]):.1f} | "
            + " | ".join(loss_cells(results, label, markets))
            + " |"
        )
    return "\n".join(lines)


def plot(results: list[dict], args: argparse.Namespace, markets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head_dim = args.d_model // N_HEADS
    fig, axes = plt.subplots(1, len(markets), figsize=(5.2 * len(markets), 3.6), squeeze=False)
    for ax, m in zip(axes[0], markets, strict=True):
        for label, plan in PLANS.items():
            v = np.array(
                [r["val_rel_mse"] for r in results if r["plan"] == label and r["market"] == m]
            )
            b = cache_bytes(plan, head_dim, 1, 1, torch.float32)
            ax.errorbar(
                b,
                v.mean(),
                yerr=v.std(ddof=1) if len(v) > 1 else 0,
                fmt="o",
                capsize=3,
                label=label,
            )
        if m == "ar1":
            ax.axhline(1 - args.phi**2, ls="--", c="grey", lw=1, label="AR(1) optimum")
        ax.axhline(1.0, ls=":", c="k", lw=1, label="predict 0")
        ax.set_xscale("log")
        ax.set_xlabel("KV-cache bytes per token (fp32, log scale)")
        ax.set_ylabel("validation MSE / MSE(0)")
        ax.set_title(m)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between ``begin`` and ``end`` in ``docs/mlkv.md`` with ``text``."""
    doc = DOCS / "mlkv.md"
    body = doc.read_text() if doc.exists() else f"# MLKV\n\n{begin}\n{end}\n"
    if begin not in body or end not in body:
        body += f"\n{begin}\n{end}\n"
    pre, rest = body.split(begin, 1)
    _, post = rest.split(end, 1)
    doc.write_text(f"{pre}{begin}\n{text}\n{end}{post}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="KV-sharing ablation: params, KV-cache bytes and next-bar validation loss "
        "of MHA/GQA/MQA/CLA-2/MLKV plans on ar1 and EURUSD.",
        epilog="example: python -m experiments.studies.kv_sharing_ablation --steps 300 "
        "--write-docs",
    )
    p.add_argument("--markets", default="ar1,eurusd", help="comma list of ar1, eurusd")
    p.add_argument(
        "--variants",
        default="all",
        help="all, kv (the KV-sharing plans), memory (reference and reference + PKM), or a "
        f"comma list of labels: {', '.join(VARIANTS)}",
    )
    p.add_argument("--phi", type=float, default=0.3, help="AR(1) coefficient of the ar1 market")
    p.add_argument("--seeds", type=int, default=3, help="seeds per plan and market")
    p.add_argument("--steps", type=int, default=80, help="optimiser steps per run")
    p.add_argument("--batch", type=int, default=8, help="segments per step")
    p.add_argument("--segment", type=int, default=64, help="scored bars per segment")
    p.add_argument(
        "--context", type=int, default=None, help="context bars per segment; default rf - 1"
    )
    p.add_argument("--d-model", type=int, default=32, help="model width (8 heads)")
    p.add_argument("--window", type=int, default=8, help="attention window W")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--write-docs", action="store_true", help="update docs/mlkv.md and the plot")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    groups = {"all": list(VARIANTS), "kv": list(PLANS), "memory": [REFERENCE, MEMORY_LABEL]}
    labels = groups.get(args.variants) or [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        p.error(
            f"--variants: unknown {unknown}; use all, kv, memory or labels from {list(VARIANTS)}"
        )
    args.seed_list = list(range(args.seeds))
    args.max_rf = max(p_.n_kv_layers for p_ in PLANS.values()) * (args.window - 1) + 1
    results = []
    for m in markets:
        parts = split_market(market(m, args.phi))
        for label in labels:
            for seed in args.seed_list:
                r = train_one(label, parts, seed, args)
                results.append({"market": m, "plan": label, "seed": seed, **r})
                print(
                    f"{m:7s} {label:24s} seed {seed}: val loss {r['val_rel_mse']:.4f} "
                    f"({r['train_s']:.1f} s)",
                    flush=True,
                )
    all_kv = all(label in labels for label in PLANS)
    has_memory = REFERENCE in labels and MEMORY_LABEL in labels
    text = markdown(results, args, markets) if any(label in PLANS for label in labels) else ""
    mem_text = memory_markdown(results, args, markets) if has_memory else ""
    print("\n" + text + "\n\n" + mem_text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write_docs:
        if all_kv:
            plot(results, args, markets, DOCS / "mlkv_ablation.png")
            write_docs(text + "\n\n![KV-cache bytes vs validation loss](mlkv_ablation.png)")
        if has_memory:
            write_docs(mem_text, MEM_BEGIN, MEM_END)


if __name__ == "__main__":
    main()
