"""Benchmarks: scripts that print ratios measured side by side in one run (docs/benchmarks.md).

Each is a module run from the repository root, `.venv/bin/python -m benchmarks.bench_x [args]`;
shared helpers are ordinary imports (`benchmarks.peak_memory`). Benchmarks time, tests assert:
no test here, and no timing in tests/ (tests/test_benchmarks.py only imports these modules).
"""
