"""Small helpers shared by the benchmark scripts: percentiles and markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles_us(seconds: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of durations, in microseconds."""
    values = np.asarray(seconds) * 1e6
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
