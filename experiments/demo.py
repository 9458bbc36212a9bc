"""The whole loop for a new user: train 3 seeds -> backtest K passes each -> verdict + report.

``mlkv-trader demo`` runs it on the embedded EURUSD H1 data; ``--market ar1`` on a synthetic
market with a planted, learnable edge (the honest expected verdict is LEARNED) and
``--market gbm`` on a random walk (where it must not be). ``--smoke`` runs the same code path
with a tiny budget in about a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation import backtest
from experiments.backtesting import print_summary
from experiments.config import TrainConfig, load_config
from experiments.factory import load_split
from experiments.progress import console
from experiments.runs import load_policy, publish
from experiments.train import train

CONFIGS = Path(__file__).parent / "configs"

#: market -> (base YAML config, overrides for the demo budget)
MARKETS: dict[str, tuple[str, list[str]]] = {
    "eurusd": (
        "eurusd_ppo.yaml",
        [
            "total_steps=24576",
            "eval_every=8192",
            "checkpoint_every=8192",
            "env.window=64",
            "model.d_model=32",
            "model.window=16",
            "model.plan={kind: mlkv, n_layers: 6, n_heads: 4, n_kv_heads: 1, n_kv_layers: 3}",
            "ppo.n_steps=256",
            "ppo.learning_rate=3e-4",
        ],
    ),
    "ar1": ("ar1_ppo.yaml", ["total_steps=61440"]),  # learns the edge by ~30k steps
    "gbm": (
        "ar1_ppo.yaml",
        [
            "total_steps=61440",
            "name=gbm_ppo",
            "data.source=synthetic:gbm",
            "data.params={vol: 0.002}",
        ],
    ),
}

#: overrides that shrink any demo to about a minute (same code path)
SMOKE = [
    "total_steps=1024",
    "eval_every=512",
    "checkpoint_every=512",
    "n_envs=4",
    "ppo.n_steps=128",
    "ppo.batch_size=128",
    "ppo.n_epochs=2",
    "data.n_bars=3000",
    "env.window=32",
    "model.d_model=16",
    "model.window=4",
    "model.plan={kind: mlkv, n_layers: 3, n_heads: 2, n_kv_heads: 1, n_kv_layers: 3}",
]


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and the verdict."""

    out: Path  # folder with the runs, backtest.json and report.html
    report: Path
    label: str


def demo_config(market: str, seed: int, smoke: bool) -> TrainConfig:
    """The training config of one demo seed."""
    if market not in MARKETS:
        raise ValueError(f"unknown demo market {market!r}; choose one of {sorted(MARKETS)}.")
    base, overrides = MARKETS[market]
    return load_config(CONFIGS / base, [*overrides, *(SMOKE if smoke else []), f"seed={seed}"])


def run_demo(
    market: str = "eurusd",
    *,
    seeds: int = 3,
    passes: int = 50,
    smoke: bool = False,
    out: str | Path = "runs/demo",
    show_progress: bool = True,
) -> DemoResult:
    """Train ``seeds`` agents, backtest each with ``passes`` passes on the test split, report."""
    if smoke:
        passes = min(passes, 8)
    configs = [demo_config(market, s, smoke) for s in range(seeds)]
    root = Path(out) / market
    console.print(
        f"[bold]demo[/bold] on {configs[0].data.source}: {seeds} seed(s) x "
        f"{configs[0].total_steps:,} steps, then {passes} passes each"
    )
    run_dirs = []
    for cfg in configs:
        run_dirs.append(
            train(
                cfg,
                runs_root=root,
                show_progress=show_progress,
                argv=["mlkv-trader", "demo", "--market", market],
            )
        )
    test = load_split(configs[0].data).test
    policies = [load_policy(r, candles=test)[0] for r in run_dirs]
    with console.status(f"backtesting {len(policies)} x {passes} passes..."):
        result = backtest(
            policies,
            test,
            passes=passes,
            env_config=configs[0].env,
            seed=0,
            names=[r.name for r in run_dirs],
        )
    summary = result.summary()
    summary["settings"].update(
        {
            "market": market,
            "data": configs[0].data.source,
            "split": "test",
            "runs": [str(r) for r in run_dirs],
        }
    )
    batch = run_dirs[0].parent
    json_path, report = publish(summary, batch)
    print_summary(summary, json_path, report)
    return DemoResult(batch, report, summary["verdict"]["label"])
