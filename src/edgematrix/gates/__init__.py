"""Regression gates: accuracy budgets and latency limits, with baselines from matrix/baselines/."""
