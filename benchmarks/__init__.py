"""Benchmarks of reec_otel: each figure measured next to its reference, in one run.

Run ``python -m benchmarks [--quick] [--json FILE]``. Ratios, not absolute
times, are what to compare between machines.
"""
