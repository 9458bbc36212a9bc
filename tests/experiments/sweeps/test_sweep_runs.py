"""Sweeps end to end on a tiny config (256 steps per seed): the local process pool and local
Ray give the same weights per seed, a failing seed is retried and recorded without losing the
other, a re-run skips done seeds and completes partial ones, backtests match in-process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from experiments.checkpoint import load_checkpoint
from experiments.cli import main
from experiments.sweeps.manifest import Sweep

from ..tiny import tiny_yaml

pytestmark = pytest.mark.slow

TINY_YAML = tiny_yaml()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "final.zip")[0]["policy"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def only_sweep(root: Path) -> Path:
    (path,) = (root / "tiny").glob("sweep-*")
    return path


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def local_sweep(config_file: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local")
    rc = main(["train", "--config", str(config_file), "--seeds", "0-1", "--workers", "2",
               "--runs-root", str(root), "--no-progress"])
    assert rc == 0
    return only_sweep(root)


@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail('Ray is in the dev extra: pip install -e ".[dev]"')
        pytest.skip("Ray not installed")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_local_sweep_writes_the_layout_and_manifest(local_sweep: Path) -> None:
    doc = json.loads((local_sweep / "sweep.json").read_text())
    assert [(r["seed"], r["status"], r["attempts"], r["error"]) for r in doc["seeds"]] == [
        (0, "done", 1, None), (1, "done", 1, None)]
    assert doc["backend"]["name"] == "local" and doc["backend"]["slots"] == 2
    for seed in (0, 1):
        run = local_sweep / f"seed-{seed}"
        assert {"config.yaml", "final.zip", "best.zip", "progress.csv"} <= {
            p.name for p in run.iterdir()}
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "ckpt-000000128.zip", "ckpt-000000256.zip"]
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    assert not same(weights(local_sweep / "seed-0"), weights(local_sweep / "seed-1"))


def test_ray_gives_the_same_weights_and_backtest_as_local(
    ray_session, local_sweep: Path, config_file: Path, tmp_path: Path
) -> None:
    rc = main(["train", "--config", str(config_file), "--seeds", "0-1", "--backend", "ray",
               "--runs-root", str(tmp_path), "--no-progress"])
    assert rc == 0
    ray_sweep = only_sweep(tmp_path)
    assert json.loads((ray_sweep / "sweep.json").read_text())["backend"]["name"] == "ray"
    for seed in (0, 1):
        a, b = weights(local_sweep / f"seed-{seed}"), weights(ray_sweep / f"seed-{seed}")
        assert same(a, b), f"seed {seed}: local and Ray weights differ"
    assert not same(weights(local_sweep / "seed-0"), weights(ray_sweep / "seed-1"))

    docs = {}
    for backend in ("local", "ray"):
        out = tmp_path / f"bt-{backend}"
        assert main(["backtest", str(local_sweep), "--passes", "3", "--backend", backend,
                     "--workers", "2", "--out", str(out), "--no-progress"]) == 0
        docs[backend] = json.loads((out / "backtest.json").read_text())
    assert docs["ray"]["pass_totals"] == docs["local"]["pass_totals"]
    assert docs["ray"]["verdict"] == docs["local"]["verdict"]
    assert docs["ray"]["settings"]["backend"] == "ray"


def test_backtest_backend_matches_in_process_policy_passes(local_sweep: Path,
                                                           tmp_path: Path) -> None:
    docs = {}
    for name, extra in (("inproc", []), ("local", ["--backend", "local", "--workers", "2"])):
        out = tmp_path / name
        assert main(["backtest", str(local_sweep), "--passes", "3", "--out", str(out),
                     "--no-progress", *extra]) == 0
        docs[name] = json.loads((out / "backtest.json").read_text())
    assert docs["local"]["policies"] == docs["inproc"]["policies"]
    assert len(docs["local"]["policies"]) == 2
    assert docs["local"]["pass_totals"] == docs["inproc"]["pass_totals"]  # random ones too
    assert docs["local"]["verdict"] == docs["inproc"]["verdict"]
    assert docs["local"]["settings"]["backend"] == "local"


def test_backtest_split_by_pass_groups_matches_in_process(local_sweep: Path,
                                                          tmp_path: Path) -> None:
    """Each run split into 2 tasks by passes: every pass as in one process, same verdict."""
    docs = {}
    for name, extra in (("inproc", []),
                        ("groups", ["--backend", "local", "--workers", "2", "--pass-groups", "2"])):
        out = tmp_path / name
        assert main(["backtest", str(local_sweep), "--passes", "3", "--out", str(out),
                     "--no-progress", *extra]) == 0
        docs[name] = json.loads((out / "backtest.json").read_text())
    a, b = docs["groups"], docs["inproc"]
    assert a["pass_totals"] == b["pass_totals"]  # every pass, random ones too
    assert a["verdict"]["label"] == b["verdict"]["label"]
    # per-bar pass averages are joined from the groups: equal up to float rounding
    for key in ("rho", "consistency_p", "excess_total", "excess_p", "timing_stat", "timing_p"):
        assert a["verdict"][key] == pytest.approx(b["verdict"][key], rel=1e-9, abs=1e-12)


def copy_sweep(local_sweep: Path, tmp_path: Path) -> Sweep:
    shutil.copytree(local_sweep, tmp_path / "sweep")
    return Sweep.open(tmp_path / "sweep")


def test_failing_seed_is_retried_and_recorded_without_losing_the_other(
    local_sweep: Path, tmp_path: Path, capsys
) -> None:
    sweep = copy_sweep(local_sweep, tmp_path)
    s0, s1 = sweep.run_dir(0), sweep.run_dir(1)
    shutil.rmtree(s0)  # seed 0 never started; seed 1's newest checkpoint is corrupt
    (s1 / "final.zip").unlink()
    (s1 / "checkpoints" / "ckpt-000000256.zip").write_bytes(b"not a zip")
    for rec in sweep.records.values():
        rec.status, rec.attempts = "pending", 0
    sweep.save()

    rc = main(["train", "--sweep", str(sweep.path), "--workers", "2", "--no-progress"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "failed seeds: 1" in out and "retrying" in out
    recs = Sweep.open(sweep.path).records
    assert (recs[1].status, recs[1].attempts) == ("failed", 2)
    assert "CheckpointError" in recs[1].error and "corrupted" in recs[1].error
    assert "Traceback" in recs[1].traceback
    assert (recs[0].status, recs[0].attempts, recs[0].error) == ("done", 1, None)
    assert same(weights(s0), weights(local_sweep / "seed-0"))


def test_resume_skips_done_seeds_and_continues_partial_ones(
    local_sweep: Path, tmp_path: Path, capsys
) -> None:
    sweep = copy_sweep(local_sweep, tmp_path)
    s0, s1 = sweep.run_dir(0), sweep.run_dir(1)
    # seed 1 was interrupted after its first checkpoint (step 128 of 256)
    (s1 / "final.zip").unlink()
    (s1 / "checkpoints" / "ckpt-000000256.zip").unlink()
    sweep.records[1].status = "running"
    sweep.save()
    stamp = (s0 / "final.zip").stat().st_mtime_ns

    rc = main(["train", "--sweep", str(sweep.path), "--workers", "2", "--no-progress"])
    assert rc == 0
    assert "skipped (done earlier): seeds 0" in capsys.readouterr().out
    recs = Sweep.open(sweep.path).records
    assert (recs[0].attempts, recs[1].status, recs[1].attempts) == (1, "done", 2)
    assert (s0 / "final.zip").stat().st_mtime_ns == stamp  # not trained again
    assert len((s1 / "command.txt").read_text().splitlines()) == 2  # resumed, same run dir
    # continued from step 128 and ended exactly where the uninterrupted run did
    assert same(weights(s1), weights(local_sweep / "seed-1"))
