"""The KV-sharing ablation runs end to end in a tiny configuration; its pieces do what they say."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from data import synthetic
from experiments.studies import kv_sharing_ablation as abl
from experiments.studies import kv_sharing_policy as pol

#: tiny settings: rf 46 is the smallest with rf - 1 divisible by 9, 5, 3 and 1
TINY = [
    "--rf", "46", "--window", "2", "--seeds", "1", "--steps", "2", "--real-steps", "2",
    "--batch", "2", "--segment", "8", "--d-model", "16", "--jobs", "1",
]  # fmt: skip


def test_equal_rf_windows_give_every_plan_the_same_history() -> None:
    windows = {label: abl.window_for(plan, 91) for label, plan in abl.PLANS.items()}
    assert windows == {
        "MHA": 11, "GQA-2": 11, "MQA": 11, "CLA-2 (GQA-2)": 19,
        "MLKV-3 (reference)": 31, "MLKV-1 (GQA-2)": 91,
    }  # fmt: skip
    for label, plan in abl.PLANS.items():
        assert plan.n_kv_layers * (windows[label] - 1) + 1 == 91
    with pytest.raises(ValueError, match="multiple of"):
        abl.window_for(abl.PLANS["CLA-2 (GQA-2)"], 64)  # 63 is not a multiple of 5


def test_volatility_target_is_the_absolute_return_and_standardised() -> None:
    candles = synthetic.gbm(3_000, seed=1)
    feats = abl.candle_features(candles)
    np.testing.assert_allclose(feats["target_vol"], feats["target"].abs())
    parts = abl.split_market(candles, ("ret", "vol"))
    assert parts.y_train.shape[1] == 2
    # ret: training root mean square 1 (predicting 0 scores 1); vol: mean 0, sd 1
    assert float(parts.y_train[:, 0].square().mean()) == pytest.approx(1.0, rel=1e-4)
    assert float(parts.y_train[:, 1].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(parts.y_train[:, 1].std(correction=0)) == pytest.approx(1.0, rel=1e-4)


def test_ablation_runs_end_to_end_and_merges(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(abl, "DOCS", tmp_path)
    echo_json, real_json = tmp_path / "echo.json", tmp_path / "real.json"
    results = abl.main(["--markets", "echo", *TINY, "--json", str(echo_json)])
    # equal rf: 6 plans; equal W = 2: 6 more (no window coincides); one seed each
    assert len(results) == 12
    rf_rows = [r for r in results if r["window"] == abl.window_for(abl.PLANS[r["plan"]], 46)]
    assert {r["plan"] for r in rf_rows} == set(abl.PLANS)
    assert {r["receptive_field"] for r in rf_rows} == {46}
    assert {r["score_skip"] for r in results} == {45}  # the largest receptive field - 1
    # the KV cache of one env is W x the per-token bytes
    for r in results:
        assert r["kv_bytes_env"] == r["window"] * r["kv_bytes_token"]
        assert all(np.isfinite(v) for v in r["val"].values())
    abl.main(["--markets", "googl", *TINY, "--compare", "rf", "--json", str(real_json)])
    assert set(json.loads(real_json.read_text())[0]["val"]) == {"ret", "vol"}
    capsys.readouterr()
    abl.main([*TINY, "--merge", str(echo_json), str(real_json), "--write-docs"])
    out = capsys.readouterr().out
    assert "**Equal receptive field**" in out and "**Equal window**" in out
    assert "| echo ret |" in out and "| googl ret | googl vol |" in out
    assert (
        f"Command: `python -m experiments.studies.kv_sharing_ablation --markets echo {TINY[0]}"
        in out
    )
    doc = (tmp_path / "mlkv.md").read_text()
    assert abl.BEGIN in doc and "mlkv_ablation.png" in doc
    assert (tmp_path / "mlkv_ablation.png").stat().st_size > 0


def test_loss_cells_show_the_spread_only_when_there_is_one() -> None:
    rows = [
        {"market": "echo", "val": {"ret": 0.75}},
        {"market": "echo", "val": {"ret": 0.77}},
        {"market": "eurusd", "val": {"ret": 1.01, "vol": 0.93}},
    ]
    cols = [("echo", "ret"), ("eurusd", "vol"), ("googl", "ret")]
    assert abl.loss_cells(rows, cols, 2) == ["0.7600 +- 0.0141", "0.9300 (n=1)", "not run"]
    assert abl.loss_cells(rows[2:], [("eurusd", "vol")], 1) == ["0.9300"]


def n_runs(args) -> int:
    """Runs a parsed command line trains: (plan, window) pairs x seeds x markets."""
    return len(args.runs) * len(args.seed_list) * len(args.market_list)


def test_no_arguments_run_the_quick_preset_that_still_asks_the_question() -> None:
    args = abl.parse_args([])
    assert not args.full and args.preset == abl.QUICK
    assert (args.market_list, args.compare, args.seeds) == (["echo"], ["rf", "w"], 1)
    assert (args.steps, args.real_steps) == (abl.QUICK.steps, abl.QUICK.real_steps)
    # small: 9 runs (MHA, GQA and MQA have W 11 in both settings and train once) ...
    assert n_runs(args) == 9
    # ... that still cover all six plans on the echo market, on both sides of its lag
    assert {label for label, _ in args.runs} == set(abl.PLANS)
    fields = {abl.PLANS[label].n_kv_layers * (w - 1) + 1 for label, w in args.runs}
    assert min(fields) < abl.ECHO["lag"] <= max(fields)
    assert args.command == "python -m experiments.studies.kv_sharing_ablation"


def test_full_restores_the_81_run_study_and_explicit_options_win() -> None:
    args = abl.parse_args(["--full"])
    assert args.preset == abl.FULL
    assert args.market_list == ["echo", "eurusd", "googl"] and args.seeds == 3
    assert n_runs(args) == 81
    args = abl.parse_args(["--full", "--markets", "echo", "--seeds", "2", "--steps", "50"])
    assert (args.market_list, args.seeds, args.steps) == (["echo"], 2, 50)
    assert args.real_steps == abl.FULL.real_steps  # not given: from the preset
    assert args.command.endswith("--full --markets echo --seeds 2 --steps 50")


def test_presets_reject_sizes_below_one(capsys) -> None:
    with pytest.raises(ValueError, match="--real-steps must be >= 1, got 0"):
        abl.Preset(markets="echo", compare="rf", seeds=1, steps=1, real_steps=0)
    with pytest.raises(SystemExit):
        abl.parse_args(["--seeds", "0"])
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err


def test_bad_arguments_are_clear(capsys) -> None:
    with pytest.raises(SystemExit):
        abl.main(["--markets", "nasdaq"])
    assert "unknown ['nasdaq']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        abl.main(["--rf", "64"])
    assert "multiple of" in capsys.readouterr().err


def test_policy_plans_share_one_receptive_field_that_covers_the_lag() -> None:
    for plan, window in pol.PLANS.values():
        n_kv_layers = {"mha": 6}.get(plan.split("kind: ")[1].split(",")[0]) or int(
            plan.split("n_kv_layers: ")[1].rstrip("}")
        )
        assert n_kv_layers * (window - 1) + 1 == 49 >= abl.ECHO["lag"]


def policy_row(plan: str, reused: int) -> dict:
    """A row as ``kv_sharing_policy.run_plan`` returns it (3 seeds), values made up."""
    return {
        "plan": plan, "window": 49, "receptive_field": 49, "kv_bytes_env": 3_136,
        "train_s": [100.0, 110.0, 120.0], "label": "LEARNED", "rho": 0.2, "excess_total": 3.5,
        "excess_p": 0.001, "timing_p": 0.0, "seed_share": 1.0,
        "seed_mean_returns": [3.1, 3.2, 3.3], "wall_s": 400.0, "reused": reused,
    }  # fmt: skip


def test_policy_table_names_command_date_load_and_reused_runs() -> None:
    args = argparse.Namespace(
        config="echo_ppo.yaml", steps=65_536, n_bars=40_000, seed_list=[0, 1, 2], passes=20,
        device="cpu", machine="a CPU, 2 cores", date="2026-01-02 03:04 UTC", load_start=1.5,
        load_end=2.5, merge=None, wall_s=321.0,
        command="python -m experiments.studies.kv_sharing_policy --seeds 3 --write-docs",
    )  # fmt: skip
    text = pol.markdown([policy_row("MHA", 0), policy_row("MLKV-1", 3)], args)
    assert "3 training seeds per plan" in text
    assert "Run 2026-01-02 03:04 UTC; load average (1 min) 1.5 at the start, 2.5 at the end" in text
    assert "| MLKV-1 | 49 | 49 | 3,136 | 110 | **LEARNED** |" in text
    assert "+3.100, +3.200, +3.300 |" in text
    assert "wall time of this invocation 321 s (backtests; 3 of 6 runs were trained before" in text
    assert (
        "Command: `python -m experiments.studies.kv_sharing_policy --seeds 3 --write-docs`" in text
    )
    text = pol.markdown([policy_row("MHA", 0)], args)
    assert "wall time (training + backtests) 321 s" in text


@pytest.mark.slow
def test_policy_study_trains_backtests_and_writes_docs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pol, "DOCS", tmp_path)
    monkeypatch.setattr(abl, "DOCS", tmp_path)
    rows = pol.main(
        ["--plans", "MLKV-1", "--seeds", "1", "--steps", "2048", "--n-bars", "3000",
         "--passes", "4", "--runs-root", str(tmp_path / "runs"), "--write-docs"]
    )  # fmt: skip
    assert rows[0]["label"] in {"LEARNED", "CONSISTENT-BUT-NO-EDGE", "RANDOM", "INCONCLUSIVE"}
    assert rows[0]["receptive_field"] == 49
    doc = (tmp_path / "mlkv.md").read_text()
    assert pol.BEGIN in doc
    assert "Command: `python -m experiments.studies.kv_sharing_policy --plans MLKV-1" in doc
