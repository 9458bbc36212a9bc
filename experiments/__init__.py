"""Experiments: the `mlkv-trader` CLI, training, backtesting, reports, benchmarks and configs."""
