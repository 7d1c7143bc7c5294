"""Runs the benchmarks: `python -m bench` (all) or `python -m bench upload trainer`.

Each bench/bench_<name>.py has `main(argv: list[str]) -> dict` that prints its
table and returns its figures; they are also written to bench/results/<name>.json.
Benchmarks print ratios measured side by side in one run; absolute times are
only meaningful on the machine that produced them.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    available = sorted(
        m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")
    )
    wanted = [a for a in argv if not a.startswith("-")] or available
    unknown = set(wanted) - set(available)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; available: {available}", file=sys.stderr)
        return 2
    results = here / "results"
    results.mkdir(exist_ok=True)
    for name in wanted:
        print(f"\n=== bench {name} ===", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        figures = module.main([a for a in argv if a.startswith("-")])
        (results / f"{name}.json").write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
