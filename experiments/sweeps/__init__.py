"""Many seeds, many machines: sweep manifests, a live board, and backends (local pool, Ray).

``manifest`` (the sweep directory and ``sweep.json``), ``board`` (live per-task lines),
``backends`` (local process pool, Ray), ``train`` (train a sweep's seeds), ``backtest``
(one backtest task per run). See ``docs/scaling.md``.
"""
