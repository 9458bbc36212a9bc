"""Studies: the scripts behind the tables in ``docs/`` (run with ``python -m``).

``calibrate_verdict`` (verdict calibration), ``kv_sharing_ablation`` (KV-sharing plans),
``config_docs`` (``docs/config.md``) and ``bench/`` (speed and memory against the peers).
Nothing in the package imports them; they import the package.
"""
