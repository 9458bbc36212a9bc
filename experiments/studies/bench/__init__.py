"""Benchmarks against the peers of ``shared/anchors``; results go to ``docs/benchmarks.md``."""
