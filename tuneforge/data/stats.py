"""Dataset statistics and a text histogram for the terminal. Imports no torch."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def length_summary(lengths: Sequence[int]) -> dict[str, float]:
    """count, min, mean, p50, p90, p99 and max of token lengths (percentiles interpolate linearly)."""
    if not lengths:
        return {"count": 0}
    values = sorted(lengths)
    if len(values) == 1:
        cuts = [float(values[0])] * 99
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "count": len(values),
        "min": values[0],
        "mean": round(statistics.fmean(values), 2),
        "p50": round(cuts[49], 2),
        "p90": round(cuts[89], 2),
        "p99": round(cuts[98], 2),
        "max": values[-1],
    }


def histogram(lengths: Sequence[int], bins: int = 10, width: int = 40) -> str:
    """Rows of `low-high | ##### count` covering the range of `lengths` in equal-width bins."""
    if not lengths:
        return "(no examples)"
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))  # ceil division
    counts = [0] * (((hi - lo) // step) + 1)
    for n in lengths:
        counts[(n - lo) // step] += 1
    top = max(counts)
    label_width = len(f"{lo + step * (len(counts) - 1)}-{lo + step * len(counts) - 1}")
    rows = []
    for i, c in enumerate(counts):
        label = f"{lo + step * i}-{lo + step * (i + 1) - 1}"
        bar = "#" * max(1 if c else 0, round(width * c / top))
        rows.append(f"{label:>{label_width}} | {bar} {c}")
    return "\n".join(rows)
