"""Rollout-monitoring dashboard: a read-only web view of run directories (docs/dashboard.md).

It reads only what the driver writes (config.yaml, metrics.jsonl, rollouts/, status.json), never the driver
or Ray, so it works on a running run, a finished run and a copied run directory alike.
"""
