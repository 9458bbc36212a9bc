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

Usage::

    python -m experiments.kv_sharing_ablation                 # defaults: a few minutes
    python -m experiments.kv_sharing_ablation --steps 600 --seeds 5 --write-docs

``--write-docs`` replaces the block between the ablation markers in ``docs/mlkv.md`` and
writes the plot to ``docs/mlkv_ablation.png``.
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
from models import EncoderConfig, KVSharingPlan, MLKVEncoder, cache_bytes

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

FEATURES = ("ret", "high", "low", "body", "dlogvol")
DOCS = Path(__file__).resolve().parents[1] / "docs"
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


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


def train_one(plan: KVSharingPlan, parts: Parts, seed: int, args: argparse.Namespace) -> dict:
    """Train one predictor; return its validation loss and bookkeeping."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = EncoderConfig(len(FEATURES), args.d_model, plan, args.window, dropout=0.0)
    model = Predictor(cfg)
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
    with torch.inference_mode():
        skip = args.max_rf - 1  # same scored bars for every plan
        pred = model(parts.x_val[None])[0, skip:]
        y = parts.y_val[skip:]
        rel = float((pred - y).square().mean() / y.square().mean())
    return {
        "val_rel_mse": rel,
        "train_s": train_s,
        "params": sum(p.numel() for p in model.encoder.parameters()),
        "receptive_field": model.encoder.receptive_field,
    }


# ---------------------------------------------------------------- report
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
        b = cache_bytes(plan, head_dim, 1, 1, torch.float32)
        cells = []
        for m in markets:
            v = np.array([r["val_rel_mse"] for r in rows if r["market"] == m])
            cells.append(f"{v.mean():.4f} +- {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
        lines.append(
            f"| {label} | {plan.total_kv_heads} | {plan.n_kv_layers} | {rows[0]['params']:,} | "
            f"{b:,} | {b / mha_bytes:.3f} | {rows[0]['receptive_field']} | "
            + " | ".join(cells)
            + " |"
        )
    total = sum(r["train_s"] for r in results)
    lines += ["", f"Total training time: {total:.0f} s."]
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


def write_docs(text: str) -> None:
    doc = DOCS / "mlkv.md"
    body = doc.read_text() if doc.exists() else f"# MLKV\n\n{BEGIN}\n{END}\n"
    if BEGIN not in body or END not in body:
        body += f"\n{BEGIN}\n{END}\n"
    pre, rest = body.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    doc.write_text(f"{pre}{BEGIN}\n{text}\n{END}{post}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="KV-sharing ablation: params, KV-cache bytes and next-bar validation loss "
        "of MHA/GQA/MQA/CLA-2/MLKV plans on ar1 and EURUSD.",
        epilog="example: python -m experiments.kv_sharing_ablation --steps 300 --write-docs",
    )
    p.add_argument("--markets", default="ar1,eurusd", help="comma list of ar1, eurusd")
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
    args.seed_list = list(range(args.seeds))
    args.max_rf = max(p_.n_kv_layers for p_ in PLANS.values()) * (args.window - 1) + 1
    results = []
    for m in markets:
        parts = split_market(market(m, args.phi))
        for label, plan in PLANS.items():
            for seed in args.seed_list:
                r = train_one(plan, parts, seed, args)
                results.append({"market": m, "plan": label, "seed": seed, **r})
                print(
                    f"{m:7s} {label:20s} seed {seed}: val loss {r['val_rel_mse']:.4f} "
                    f"({r['train_s']:.1f} s)",
                    flush=True,
                )
    text = markdown(results, args, markets)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write_docs:
        plot(results, args, markets, DOCS / "mlkv_ablation.png")
        write_docs(text + "\n\n![KV-cache bytes vs validation loss](mlkv_ablation.png)")


if __name__ == "__main__":
    main()
