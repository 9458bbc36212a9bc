"""Sweeps without training: seed specs, the manifest, the scheduler on real worker processes,
progress parsing, and the Ray backend's set-up (with a stand-in ``ray`` module)."""

from __future__ import annotations

import json
import operator
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.config import load_config
from experiments.errors import BackendError, SweepError
from experiments.sweeps.backends import RayBackend, Resources, make_backend, run_tasks
from experiments.sweeps.board import read_progress
from experiments.sweeps.manifest import MANIFEST, Sweep, expand_runs, parse_seeds
from experiments.sweeps.train import seed_resources

TINY = ["name=tiny", "total_steps=256", "n_envs=2", "ppo.n_steps=64", "data.source=synthetic:ar1",
        "data.n_bars=1200"]


@pytest.mark.parametrize(
    ("spec", "seeds"),
    [("0-9", list(range(10))), ("0,2,5", [0, 2, 5]), ("3-4, 1 ,3", [1, 3, 4]), ("7", [7])],
)
def test_parse_seeds(spec: str, seeds: list[int]) -> None:
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize(
    ("spec", "match"),
    [("", "give seeds"), ("5-2", "range 5-2 is empty"), ("a", "'a' is not a seed"),
     ("-1", "not a seed"), ("1,,2", "give seeds")],
)
def test_bad_seed_specs_say_what_to_write(spec: str, match: str) -> None:
    with pytest.raises(SweepError, match=match):
        parse_seeds(spec)


def test_manifest_round_trip_and_run_configs(tmp_path: Path) -> None:
    sweep = Sweep.create(load_config(None, TINY), [0, 3], tmp_path)
    assert sweep.path.parent == tmp_path / "tiny" and sweep.path.name.startswith("sweep-")
    doc = json.loads((sweep.path / MANIFEST).read_text())
    assert doc["format"] == "mlkv-trader-sweep" and doc["config"] == "config.yaml"
    assert [(r["seed"], r["status"], r["attempts"], r["run_dir"]) for r in doc["seeds"]] == [
        (0, "pending", 0, "seed-0"), (3, "pending", 0, "seed-3")]
    assert load_config(sweep.run_dir(3) / "config.yaml").seed == 3
    assert sweep.todo() == [0, 3]
    sweep.records[0].status = "done"  # but no final.zip: still to do
    sweep.save()
    assert Sweep.open(sweep.path).todo() == [0, 3]
    (sweep.run_dir(0) / "final.zip").write_bytes(b"")
    again = Sweep.open(sweep.path)
    assert again.todo() == [3] and again.records == sweep.records
    assert again.add_seeds([3, 4]) == [4] and Sweep.open(sweep.path).todo() == [3, 4]


def test_second_driver_is_refused(tmp_path: Path) -> None:
    sweep = Sweep.create(load_config(None, TINY), [0], tmp_path)
    with sweep.lock(), pytest.raises(SweepError, match="another"):
        with Sweep.open(sweep.path).lock():
            pass
    with sweep.lock():  # released
        pass


def test_open_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="not a sweep directory"):
        Sweep.open(tmp_path)


@pytest.mark.parametrize("run_dir", ["../elsewhere", "/tmp/x", "seed-0/../../x", ""])
def test_manifest_run_dir_cannot_leave_the_sweep(tmp_path: Path, run_dir: str) -> None:
    sweep = Sweep.create(load_config(None, TINY), [0], tmp_path)
    doc = json.loads((sweep.path / MANIFEST).read_text())
    doc["seeds"][0]["run_dir"] = run_dir
    (sweep.path / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(SweepError, match="leaves the sweep directory"):
        Sweep.open(sweep.path)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "mlkv-trader-sweep", "seeds": 3}'])
def test_damaged_manifest_is_one_clear_error(tmp_path: Path, text: str) -> None:
    sweep = Sweep.create(load_config(None, TINY), [0], tmp_path)
    (sweep.path / MANIFEST).write_text(text)
    with pytest.raises(SweepError, match=r"sweep\.json"):
        Sweep.open(sweep.path)


def test_backtest_expands_sweeps_to_done_seeds(tmp_path: Path) -> None:
    sweep = Sweep.create(load_config(None, TINY), [0, 1, 2], tmp_path)
    sweep.records[0].status = sweep.records[2].status = "done"
    sweep.records[1].status = "failed"
    sweep.save()
    assert expand_runs([sweep.path]) == [sweep.run_dir(0), sweep.run_dir(2)]
    assert expand_runs([sweep.path], [2]) == [sweep.run_dir(2)]
    assert expand_runs([sweep.run_dir(1), sweep.run_dir(0)], [0]) == [sweep.run_dir(0)]
    with pytest.raises(SweepError, match=r"seed\(s\) 1"):
        expand_runs([sweep.path], [0, 1])


def test_read_progress_takes_the_last_complete_row(tmp_path: Path) -> None:
    assert read_progress(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000512.zip").write_bytes(b"")
    assert read_progress(tmp_path) == (512, None)  # a resumed run before its first row
    (tmp_path / "progress.csv").write_text(
        "a,time/total_timesteps,time/fps\n1,640,55\n2,768,60\n3,89"  # last row half-written
    )
    assert read_progress(tmp_path) == (768, 60.0)


def test_seed_resources_ask_for_a_gpu_when_the_config_uses_cuda() -> None:
    assert seed_resources(load_config(None, TINY)) == Resources(cpus=1, gpus=0.0)
    cuda = load_config(None, [*TINY, "device=cuda"])
    assert seed_resources(cuda, cpus=2) == Resources(cpus=2, gpus=1.0)
    assert seed_resources(cuda, gpus=0.5).gpus == 0.5


def test_local_pool_retries_then_records_errors_and_dead_workers(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # the local backend must not need Ray
    events: list[tuple] = []

    class Log:
        def started(self, key, attempt):
            events.append(("start", key, attempt))

        def retrying(self, key, outcome):
            events.append(("retry", key))

        def finished(self, key, outcome, attempts):
            events.append(("end", key, attempts))

        def tick(self):
            pass

    tasks = {
        "ok": (operator.add, (2, 3)),
        "raises": (operator.truediv, (1, 0)),
        "dies": (os._exit, (3,)),  # the worker process vanishes without a word
    }
    backend = make_backend("local", workers=3)
    out = run_tasks(tasks, backend, attempts=2, listener=Log(), poll=0.2)
    assert out["ok"].ok and out["ok"].value == 5
    assert out["raises"].error == "ZeroDivisionError: division by zero"
    assert "Traceback" in out["raises"].details
    assert out["dies"].error.startswith("WorkerDied") and "code 3" in out["dies"].error
    assert ("start", "raises", 2) in events and ("start", "dies", 2) in events
    assert ("start", "ok", 2) not in events and ("end", "ok", 1) in events
    assert events.count(("retry", "raises")) == 1 and ("end", "raises", 2) in events


def test_ray_backend_without_ray_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendError, match=r'pip install -e "\.\[ray\]"'):
        make_backend("ray")
    with pytest.raises(BackendError, match="needs --backend ray"):
        make_backend("local", address="auto")


def test_cli_without_ray_exits_2_with_the_install_command(monkeypatch, tmp_path, capsys) -> None:
    import experiments
    from experiments.cli import main

    config = Path(experiments.__file__).parent / "configs" / "ar1_ppo.yaml"
    monkeypatch.setitem(sys.modules, "ray", None)
    rc = main(["train", "--config", str(config), "--seeds", "0-1",
               "--backend", "ray", "--runs-root", str(tmp_path)])
    assert rc == 2
    assert '".[ray]"' in capsys.readouterr().err  # printed as is, not eaten as rich markup
    assert not list(tmp_path.iterdir())  # no sweep directory left behind


class FakeRay:
    """Just enough of ``ray`` to see what the backend asks of it; runs tasks inline."""

    def __init__(self, initialized: bool = False) -> None:
        self.inits: list[dict] = []
        self.options: list[dict] = []
        self.initialized, self.shut = initialized, False

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)
        self.initialized = True

    def shutdown(self) -> None:
        self.shut = True

    def cluster_resources(self) -> dict:
        return {"CPU": 8.0, "GPU": 2.0}

    def remote(self, fn):
        ray = self

        class Remote:
            def options(self, **opts):
                ray.options.append(opts)
                return SimpleNamespace(remote=lambda *a: ("ref", fn(*a)))

        return Remote()

    def wait(self, refs, num_returns, timeout):
        return refs, []

    def get(self, ref):
        return ref[1]


def test_ray_backend_starts_local_ray_or_joins_a_cluster(monkeypatch) -> None:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = RayBackend(workers=2, resources=Resources(cpus=1))
    assert fake.inits == [{"include_dashboard": False, "logging_level": "WARNING", "num_cpus": 2}]
    assert backend.slots == 2
    out = run_tasks({7: (operator.mul, (6, 7))}, backend, poll=0.01)
    assert out[7].value == 42
    assert fake.options[-1] == {"num_cpus": 1, "num_gpus": 0.0, "max_retries": 0,
                                "name": "mlkv-task-7"}
    backend.close()
    assert fake.shut

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    backend = RayBackend(address="ray://head:10001", resources=Resources(cpus=2, gpus=1))
    assert fake.inits[0]["address"] == "ray://head:10001"
    assert backend.slots == 2  # 8 CPUs / 2, but 2 GPUs / 1
    backend.submit(0, operator.add, (1, 1))
    assert fake.options[-1]["num_gpus"] == 1 and fake.options[-1]["num_cpus"] == 2

    fake = FakeRay(initialized=True)  # a session the caller started: reuse, leave it running
    monkeypatch.setitem(sys.modules, "ray", fake)
    RayBackend().close()
    assert fake.inits == [] and not fake.shut
