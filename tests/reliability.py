"""Figures of the reliability suite, printed as one table at the end of a run
(see pytest_terminal_summary in conftest.py). Tests marked `reliability`
record what they tried and what happened; `make check-reliability` runs them."""

from __future__ import annotations

import os
from collections import OrderedDict

FIGURES: OrderedDict[tuple[str, str], str] = OrderedDict()
# Heavier variants (more fuzz examples, longer load) run with TEXTFT_HEAVY=1.
HEAVY = os.environ.get("TEXTFT_HEAVY", "") not in ("", "0")


def record(area: str, figure: str, value: object) -> None:
    FIGURES[(area, figure)] = str(value)


def table() -> str:
    if not FIGURES:
        return ""
    width_area = max(len(a) for a, _ in FIGURES)
    width_fig = max(len(f) for _, f in FIGURES)
    lines = [f"{'area':<{width_area}}  {'figure':<{width_fig}}  value", "-" * (width_area + width_fig + 20)]
    lines += [f"{a:<{width_area}}  {f:<{width_fig}}  {v}" for (a, f), v in FIGURES.items()]
    return "\n".join(lines)
