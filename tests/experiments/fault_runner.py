"""Run the mlkv-trader CLI with one fault planted (used by test_faults.py, never by users).

    python fault_runner.py POINT HIT mlkv-trader-arguments...

POINT is where the fault strikes, HIT which pass through that point (1-based):

- ``rollout``: SIGKILL at the HIT-th env step of training;
- ``update``: SIGKILL after the HIT-th optimizer step (inside a PPO update);
- ``evaluation``: SIGKILL at the HIT-th env step of a validation pass (``step`` or the
  ``replay`` fast path);
- ``checkpoint``: at the HIT-th ``.zip`` write, cut the temporary file to half its size and
  SIGKILL before it is renamed into place (a torn write);
- ``disk-full``: the HIT-th write of a checkpoint (``checkpoints/ckpt-*.zip`` or
  ``final.zip``) fails with ENOSPC after half its bytes.

A point never reached leaves the run alone (the process then ends as usual).
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def plant(point: str, hit: int) -> None:
    count = [0]

    def reached() -> bool:
        count[0] += 1
        return count[0] == hit

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "rollout":
        from experiments.train import TrainCallback

        on_step = TrainCallback._on_step

        def _on_step(self):
            if reached():
                die()
            return on_step(self)

        TrainCallback._on_step = _on_step
    elif point == "update":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *_: reached() and die())
    elif point == "evaluation":
        from envs import MarketReplayVecEnv

        step_wait = MarketReplayVecEnv.step_wait

        def _step_wait(self):
            if self.config.mode == "test" and reached():
                die()
            return step_wait(self)

        MarketReplayVecEnv.step_wait = _step_wait
        replay = MarketReplayVecEnv.replay  # the backtest's fast path: C steps per call

        def _replay(self, actions, *args, **kwargs):
            for _ in range(len(actions)):
                if reached():
                    die()
            return replay(self, actions, *args, **kwargs)

        MarketReplayVecEnv.replay = _replay
    elif point == "checkpoint":
        replace = os.replace

        def _replace(src, dst, *args, **kwargs):
            if str(dst).endswith(".zip") and reached():
                os.truncate(src, os.path.getsize(src) // 2)
                die()
            return replace(src, dst, *args, **kwargs)

        os.replace = _replace
    elif point == "disk-full":
        import experiments.checkpoint as checkpoint

        fdopen = os.fdopen

        class Full:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def _fdopen(fd, *args, **kwargs):
            f = fdopen(fd, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{fd}")
            base = os.path.basename(name)
            ours = base.startswith((".ckpt-", ".final.zip."))
            return Full(f) if ours and reached() else f

        checkpoint.os.fdopen = _fdopen  # checkpoint.os is os: only this process is affected
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    plant(sys.argv[1], int(sys.argv[2]))
    from experiments.cli import main

    sys.exit(main(sys.argv[3:]))
