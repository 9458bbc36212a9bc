"""``make gpu-check`` (experiments/studies/bench/gpu_check.py) without a GPU.

Without CUDA the check says so and exits 0; ``--smoke`` runs every figure on the CPU at toy
sizes, so the script that will first run on a lent GPU has run end to end before.
"""

from __future__ import annotations

import pytest
import torch

from experiments.studies.bench import gpu_check


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "CUDA is not available" in out and "|" not in out  # no table, nothing measured


def test_smoke_run_prints_every_figure_in_one_table(capsys, tmp_path):
    torch.set_num_threads(1)
    code = gpu_check.main(["--smoke", "--skip-tests", "--skip-ppo", "--json",
                           str(tmp_path / "rows.json")])
    assert code == 0
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    checks = " ".join(table)
    for figure in ("train fwd+bwd", "segments", "achieved bf16", "peak memory", "step, 4 envs",
                   "step, 8 envs", "encode_series"):
        assert figure in checks, figure
    assert (tmp_path / "rows.json").exists()


@pytest.mark.slow
def test_smoke_run_with_the_cuda_tests_and_ppo(capsys):
    torch.set_num_threads(1)
    assert gpu_check.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "PPO training FPS" in out


def test_a_failed_cuda_test_run_fails_the_check(monkeypatch):
    class Failed:
        returncode, stdout = 1, "1 failed, 10 passed in 3.0s\n"

    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: Failed())
    assert "FAILED" in gpu_check.cuda_test_rows()[0].ours
