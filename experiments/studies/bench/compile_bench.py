"""torch.compile on the CPU: does it pay for the PPO update of the eurusd config?

One process, same machine: ``MLKVPPO`` built from ``experiments/configs/eurusd_ppo.yaml``
(reference plan, d_model 64, encoder window 16, n_steps 512, batch 256, 4 epochs) runs
rollout + update cycles with the encoder eager and with ``model.compile`` (inductor). The
first cycle of the compiled agent includes compiling its graphs; later cycles show the
steady state. Each figure is the best of the later cycles, in wall time and in this
process's CPU time (robust to other jobs on a shared machine; inductor compiles in worker
processes, so compile time is only in the wall figure).

Usage::

    python -m experiments.studies.bench.compile_bench                # 1 thread, ~10 min
    python -m experiments.studies.bench.compile_bench --quick        # n_envs 2, n_steps 128
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eurusd_ppo.yaml"


def cycles(compile_mode: str | None, args: argparse.Namespace) -> list[dict[str, float]]:
    """Rollout and update times (wall and CPU seconds) of ``args.cycles`` PPO iterations."""
    from experiments.config import load_config
    from experiments.factory import build_agent, load_split, make_venv

    torch._dynamo.reset()
    cfg = load_config(CONFIG)
    cfg = replace(
        cfg,
        n_envs=args.n_envs,
        model=replace(cfg.model, compile=compile_mode),
        ppo=replace(cfg.ppo, n_steps=args.n_steps),
    )
    agent = build_agent(cfg, make_venv(load_split(cfg.data).train, cfg))
    total = args.cycles * cfg.ppo.n_steps * cfg.n_envs
    total, callback = agent._setup_learn(total)
    out = []
    for _ in range(args.cycles):
        w0, c0 = time.perf_counter(), time.process_time()
        agent.collect_rollouts(agent.env, callback, agent.rollout_buffer, agent.n_steps)
        w1, c1 = time.perf_counter(), time.process_time()
        agent._update_current_progress_remaining(agent.num_timesteps, total)
        agent.train()
        w2, c2 = time.perf_counter(), time.process_time()
        out.append({"rollout_wall": w1 - w0, "rollout_cpu": c1 - c0,
                    "update_wall": w2 - w1, "update_cpu": c2 - c1})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python -m experiments.studies.bench.compile_bench --threads 1",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--mode", default="default", help="torch.compile mode (default 'default')")
    p.add_argument("--n-envs", type=int, default=8, help="envs (eurusd config: 8)")
    p.add_argument("--n-steps", type=int, default=512, help="steps per rollout (config: 512)")
    p.add_argument("--cycles", type=int, default=3, help="rollout + update cycles per setup")
    p.add_argument("--quick", action="store_true", help="n_envs 2, n_steps 128, 2 cycles")
    args = p.parse_args(argv)
    if args.quick:
        args.n_envs, args.n_steps, args.cycles = 2, 128, 2
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), n_envs {args.n_envs}, n_steps {args.n_steps}, "
        f"{args.cycles} cycles"
    )
    print("| encoder | first update (wall s) | update (wall s) | update (CPU s) "
          "| rollout (wall s) | rollout (CPU s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in (None, args.mode):
        runs = cycles(mode, args)
        rest = runs[1:] or runs
        best = {k: min(r[k] for r in rest) for k in rest[0]}
        name = "eager" if mode is None else f"torch.compile({mode!r}), inductor"
        print(
            f"| {name} | {runs[0]['update_wall']:.2f} | {best['update_wall']:.2f} | "
            f"{best['update_cpu']:.2f} | {best['rollout_wall']:.2f} | "
            f"{best['rollout_cpu']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
