"""Benchmarks: each bench_*.py module measures one thing side by side and prints ratios."""

import os


def offline() -> None:
    """No hub: anything that would download fails fast instead of hanging (as in tests/conftest.py)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)
