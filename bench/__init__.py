"""Benchmarks: each bench_*.py module measures one thing side by side and prints ratios."""
